"""Data sets for clustering, loaded from local files only: nothing here ever downloads.

``load_dataset(source)`` returns a ``Dataset`` holding the raw array ``X`` of shape (n, D) in its stored
dtype (images (n, h, w) or (n, c, h, w) are flattened by a reshape, which for a memory map is a view, not a
copy), optional int64 labels ``y`` (n,), and an affine scaling ``features = (X - offset) / scale`` applied
lazily, batch by batch, by ``Dataset.features`` and by the ``torch_dataset()`` view. Sources:

- ``"digits"``: scikit-learn's ``load_digits``, 1797 x 64, values 0..16, image_shape (1, 8, 8).
- ``"fashion-mnist"``: all 70000 images (train then t10k), 784 uint8 features, image_shape (1, 28, 28), from
  ``data_dir`` (default ``/usr/share/datasets/fashion-mnist``, filled by ``apt-get install
  dataset-fashion-mnist``) holding the four idx files, gzipped or not.
- a path: ``.npz`` (array ``X``, optional ``y``); ``.npy`` (memory-mapped read-only, never read whole);
  ``.csv`` (comma separated numbers; a first row that is not numeric is a header, and a column named ``y``
  or ``label`` holds the labels); idx files (``*-ubyte``, ``*.idx``, optionally ``.gz``: two zero bytes, a
  dtype code, the rank, the dims as big-endian uint32, then the data; uncompressed ones are memory-mapped).
  For an ``*images-idx3*`` file a sibling ``*labels-idx1*`` file, if present, gives ``y``.

Labels that are not integers (strings, 1.5) are coded 0..k-1 in sorted order.

``scaling``: ``"minmax"`` maps to [0, 1] (by the known range for uint8 (0..255), bool and digits (0..16),
otherwise by the global min and max); ``"standard"`` gives per-feature mean 0 and std 1 (a constant feature
is only centred); ``None`` keeps raw values. Statistics and the NaN/inf check run in chunks, so a memory
map of any size is streamed with bounded memory.
"""
import dataclasses
import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SUPPORTED_FORMATS = ".npz, .npy, .csv, idx (*-ubyte, *.idx, each optionally .gz)"
_SCALINGS = ("minmax", "standard", None)
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Rows per chunk when streaming: at most 65536 rows and about 4M elements (32 MB as float64), so that a
# chunk of 784-pixel images stays small while narrow tables still go in few passes.
_CHUNK_ROWS, _CHUNK_ELEMENTS = 65536, 1 << 22
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class DatasetNotFoundError(FileNotFoundError):
    """A named data set is not on this machine; the message says how to get it."""


class DataShapeError(ValueError):
    """X or its labels have a shape that is not a data set (rank, empty, labels not one per row)."""


class NonFiniteDataError(ValueError):
    """Rows of X hold NaN or inf; the message counts them and names the first."""


@dataclasses.dataclass
class Dataset:
    """Raw data ``X`` (n, D), labels ``y`` (n,) or None, and the scaling ``features = (X - offset) / scale``.

    ``unit_interval`` is True when the scaled features are known to lie in [0, 1] (so a model may use a
    Bernoulli decoder). ``image_shape`` is the (c, h, w) each row reshapes to, or None for tabular data.
    """

    X: np.ndarray
    y: np.ndarray | None
    name: str
    image_shape: tuple | None = None
    offset: np.ndarray | float = 0.0
    scale: np.ndarray | float = 1.0
    unit_interval: bool = False

    def __post_init__(self):
        if self.X.ndim != 2:
            raise ValueError(f"Dataset X has shape {self.X.shape}; expected (n, D)")
        if self.y is not None and self.y.shape != (len(self.X),):
            raise ValueError(f"Dataset y has shape {self.y.shape}; expected ({len(self.X)},)")

    def __len__(self):
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def features(self, index=None) -> np.ndarray:
        """Scaled float32 rows (len(index), D); ``index`` is None (all), a slice, an int or an int array.

        Only the indexed rows are read, so on a memory map this costs the batch, not the file.
        """
        rows = np.asarray(self.X if index is None else self.X[index])
        if rows.ndim == 1:  # a single int index
            rows = rows[None]
        # NumPy promotion computes in float32 for small ints and float32 data, in float64 for float64 data
        # (whose range may exceed float32 before scaling); the result is float32 either way.
        return ((rows - self.offset) / self.scale).astype(np.float32, copy=False)

    def rows(self) -> "ScaledRows":
        """A read-only array-like view of the scaled rows (N, D) float32, read only where indexed; see
        ``ScaledRows``."""
        return ScaledRows(self)

    def subset(self, n: int, seed: int = 0) -> "Dataset":
        """A random subset of ``n`` distinct rows (in file order), the same for the same seed."""
        if not 1 <= n <= len(self):
            raise ValueError(f"subset n={n}; expected 1 <= n <= {len(self)} (the number of rows)")
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        y = None if self.y is None else self.y[idx]
        return dataclasses.replace(self, X=np.asarray(self.X[idx]), y=y, name=f"{self.name}[subset {n}]")

    def torch_dataset(self) -> torch.utils.data.Dataset:
        """A map-style torch Dataset of scaled float32 rows; see ``TorchFeatures``."""
        return TorchFeatures(self)


class ScaledRows:
    """The scaled rows of a ``Dataset`` as an array-like (N, D) float32 that holds none of them: ``view[i]``,
    ``view[lo:hi]`` and ``view[int array]`` return float32 NumPy rows equal to ``Dataset.features`` of that
    index (on a memory map only the indexed rows are read). For searches over all rows of data too large to
    copy (``dhvc_ext.neighbors.knn_indices``, ``dhvc_ext.manifold.manifold_posteriors``): the file's pages
    are the only copy, and the operating system may drop them."""

    def __init__(self, data: Dataset):
        self.data = data
        self.shape = (len(data), data.n_features)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        # the row dtype features() computes in before its cast to float32
        self._work = np.result_type(data.X.dtype, np.asarray(data.offset).dtype, np.asarray(data.scale).dtype)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        return self.data.features(index)

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(view)``: every row, read now (N x D float32 in memory)."""
        rows = self.data.features()
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def take(self, index, out=None):
        """Rows ``index`` (int array (B,)) as float32 (B, D), written into ``out`` (at least B rows of float32)
        when given: the same values as ``features(index)`` without its float temporaries, which for large
        gathers repeated block after block cost more in page faults than the arithmetic."""
        index = np.asarray(index, dtype=np.int64)
        if out is None:
            return self.data.features(index)
        out = out[:len(index)]
        if self._work != np.float32:  # e.g. float64 data: features() rounds once, from float64
            out[...] = self.data.features(index)
            return out
        np.subtract(np.take(self.data.X, index, axis=0), self.data.offset, out=out)
        np.divide(out, self.data.scale, out=out)
        return out


class TorchFeatures(torch.utils.data.Dataset):
    """``dataset[i]`` is the float32 tensor (D,) of row i; ``__getitems__(indices)`` is one tensor (B, D).

    torch's DataLoader (map-style, batched) calls ``__getitems__`` with the whole batch of indices when the
    dataset defines it, so a batch is a single fancy-indexed read and one scaling instead of B small ones.
    Its result then goes to ``collate_fn``: pass one that returns the tensor unchanged (e.g.
    ``collate_fn=lambda batch: batch``); the default collate would only stack the rows again.
    """

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return torch.from_numpy(self.data.features(np.array([i]))[0])

    def __getitems__(self, indices):
        return torch.from_numpy(self.data.features(np.asarray(indices, dtype=np.int64)))


def load_dataset(source="digits", *, scaling="minmax", data_dir=None) -> Dataset:
    """Load ``"digits"``, ``"fashion-mnist"`` or a file (see the module docstring), scaled by ``scaling``."""
    if scaling not in _SCALINGS:
        raise ValueError(f"scaling={scaling!r}; expected one of {_SCALINGS}")
    if data_dir is not None and source != "fashion-mnist":
        raise ValueError(f"data_dir is only used with source='fashion-mnist', not source={source!r}")
    who, known_range = f"load_dataset({str(source)!r})", None
    if source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        X, y, name, known_range = bunch.data.reshape(-1, 8, 8), bunch.target, "digits", (0.0, 16.0)
    elif source == "fashion-mnist":
        X, y = _load_fashion_mnist(Path(data_dir) if data_dir else FASHION_MNIST_DIR)
        name = "fashion-mnist"
    else:
        X, y = _load_file(Path(source), who)
        name = Path(source).name
    X, image_shape = _as_2d(X, who)
    y = None if y is None else _as_labels(y, len(X), who)
    if known_range is None and X.dtype.kind in "bu" and X.dtype.itemsize == 1:
        known_range = (0.0, 1.0) if X.dtype == bool else (0.0, 255.0)
    offset, scale, unit = np.float32(0), np.float32(1), False
    if scaling == "minmax" and known_range is not None and X.dtype.kind in "biu":
        lo, hi = known_range  # integers are finite and the range is known: no pass over the data needed
    else:
        lo, hi, mean, std = _scan(X, who, moments=scaling == "standard")
        if scaling == "minmax" and known_range is not None:  # e.g. digits: float64 data, range 0..16
            lo, hi = known_range
    if scaling == "minmax":
        # scale in float32 arithmetic, as features() computes, so the largest value maps to exactly 1.0
        offset, unit = np.float32(lo), True
        with np.errstate(over="ignore"):
            scale = np.float32(hi) - offset if hi > lo else np.float32(1)
        if not np.isfinite(scale):
            raise NonFiniteDataError(f"{who}: the range of X, {lo:g} to {hi:g}, overflows float32 (max "
                                     f"{_FLOAT32_MAX:.4g}); scale the data first, or use scaling='standard'")
    elif scaling == "standard":
        offset, scale = mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)
    else:
        unit = bool(lo >= 0 and hi <= 1)
    return Dataset(X, y, name, image_shape, offset, scale, unit)


def check_features(X, who: str = "X") -> np.ndarray:
    """Validate a user's array or tensor (n, D) (or images, flattened) and return it as float32 (n, D).

    Same rules as the loaders: numeric dtype, n >= 1 and D >= 1, no NaN or inf (also after the cast, so a
    float64 value beyond float32's range is caught). Not copied if it is already a C-contiguous float32 array.
    """
    if X is None:
        raise TypeError(f"{who}: X is None; expected an array or tensor of shape (n_samples, n_features)")
    if _is_sparse(X):
        raise TypeError(f"{who}: sparse input ({type(X).__name__}) is not supported: use X.toarray()")
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu()
        X = X.float().numpy() if X.is_floating_point() else X.numpy()  # numpy has no bfloat16
    X, _ = _as_2d(np.asarray(X), who)
    with np.errstate(over="ignore"):  # an overflow becomes inf, which _scan reports with its row
        X = np.ascontiguousarray(X, dtype=np.float32)
    _scan(X, who, moments=False)
    return X


def _is_sparse(X):
    """A SciPy sparse matrix or array (without importing SciPy when it is not loaded), or a sparse tensor."""
    import sys

    if isinstance(X, torch.Tensor):
        return X.layout != torch.strided
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(X)


def _as_2d(X, who):
    """Check the dtype and shape of X and flatten images; return (X (n, D), image_shape or None)."""
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{who}: X has dtype {X.dtype}; expected numbers (bool, integer or floating point)")
    if X.ndim not in (2, 3, 4) or X.shape[0] < 1 or math.prod(X.shape[1:]) < 1:
        raise DataShapeError(f"{who}: X has shape {X.shape}; expected (n, D) features or (n, h, w) / (n, c, h, w) "
                         "images, with n >= 1 and D >= 1")
    image_shape = None if X.ndim == 2 else (1, *X.shape[1:]) if X.ndim == 3 else tuple(X.shape[1:])
    return X.reshape(X.shape[0], -1), image_shape


def _as_labels(y, n, who):
    y = np.asarray(y)
    if y.shape != (n,):
        raise DataShapeError(f"{who}: labels have shape {y.shape}; expected ({n},), one per row of X")
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    try:
        as_float = y.astype(np.float64)
        if np.all(as_float == np.round(as_float)):
            return as_float.astype(np.int64)
    except ValueError:  # strings that are not numbers
        pass
    return np.unique(y, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _scan(X, who, moments):
    """One chunked pass over X (n, D): reject NaN/inf; return global min, max and per-feature mean, std."""
    n, d = X.shape
    step = max(1, min(_CHUNK_ROWS, _CHUNK_ELEMENTS // d))
    n_bad, first_bad, lo, hi = 0, -1, math.inf, -math.inf
    count, mean, m2 = 0, np.zeros(d), np.zeros(d)
    for start in range(0, n, step):
        block = np.asarray(X[start:start + step])
        if block.dtype.kind == "f":
            # Features are float32: a finite float64 value beyond its range would become inf (or, scaled by a
            # range that overflows, NaN) in training, so it is refused with NaN and inf.
            with np.errstate(invalid="ignore"):
                bad = ~(np.abs(block) <= _FLOAT32_MAX).all(axis=1)
            if bad.any():
                first_bad = first_bad if n_bad else start + int(np.argmax(bad))
                n_bad += int(bad.sum())
                continue
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        if moments:  # Chan et al.'s pairwise update: no catastrophic cancellation for large means
            b = block.astype(np.float64)
            b_mean, total = b.mean(axis=0), count + len(b)
            delta = b_mean - mean
            m2 += ((b - b_mean) ** 2).sum(axis=0) + delta**2 * count * len(b) / total
            mean += delta * len(b) / total
            count = total
    if n_bad:
        raise NonFiniteDataError(f"{who}: {n_bad} of {n} rows contain NaN or inf (first bad row: {first_bad}); "
                                 f"expected finite values within float32's range (|x| <= {_FLOAT32_MAX:.4g}), the "
                                 "dtype of the features")
    return lo, hi, mean, np.sqrt(m2 / max(count, 1))


def _load_file(path, who):
    if not path.exists():
        raise FileNotFoundError(f"{who}: no such file {str(path)!r} (and not a named data set: 'digits', "
                                "'fashion-mnist')")
    name = path.name.lower()
    if name.endswith(".npz"):
        with np.load(path) as archive:
            if "X" not in archive.files:
                raise ValueError(f"{who}: the .npz has no array 'X' (its keys: {archive.files}); expected X "
                                 "(n, D) and optionally y (n,)")
            return archive["X"], archive["y"] if "y" in archive.files else None
    if name.endswith(".npy"):
        return np.load(path, mmap_mode="r"), None
    if name.endswith(".csv"):
        return _load_csv(path, who)
    if name.removesuffix(".gz").endswith(("-ubyte", ".idx")):
        X, y = _read_idx(path), None
        for candidate in _sibling_labels(path):
            if candidate.exists():
                y = _read_idx(candidate)
                break
        return X, y
    raise ValueError(f"{who}: unknown file type {path.name!r}; supported formats: {SUPPORTED_FORMATS}")


def _sibling_labels(path):
    if "images-idx3" not in path.name:
        return []
    stem = path.name.replace("images-idx3", "labels-idx1").removesuffix(".gz")
    return [path.with_name(stem), path.with_name(stem + ".gz")]


def _load_csv(path, who):
    with open(path) as f:
        cells = [c.strip().strip('"').lower() for c in f.readline().split(",")]
    if cells == [""]:
        raise ValueError(f"{who}: the .csv is empty; expected rows of comma-separated numbers")

    def is_number(cell):
        try:
            float(cell)
            return True
        except ValueError:
            return False

    header = not all(map(is_number, cells))
    label = next((i for i, c in enumerate(cells) if header and c in ("y", "label")), None)
    columns = [i for i in range(len(cells)) if i != label]
    try:
        X = np.loadtxt(path, delimiter=",", skiprows=int(header), usecols=columns, ndmin=2, dtype=np.float64)
        y = None if label is None else np.loadtxt(path, delimiter=",", skiprows=1, usecols=label, dtype=str, ndmin=1)
    except ValueError as err:
        raise ValueError(f"{who}: the .csv holds a cell that is not a number ({err})") from err
    return X, y


def _read_idx(path):
    """Parse an idx file (see the module docstring); uncompressed files become read-only memory maps."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES or magic[3] == 0:
            raise ValueError(f"{path}: not an idx file (magic bytes {magic.hex()}; expected 00 00, a dtype code "
                             f"in {[hex(c) for c in _IDX_DTYPES]} and a rank >= 1)")
        dims = struct.unpack(f">{magic[3]}I", f.read(4 * magic[3]))
        dtype = np.dtype(_IDX_DTYPES[magic[2]])
        n_bytes, header = math.prod(dims) * dtype.itemsize, 4 + 4 * magic[3]
        data = f.read() if opener is gzip.open else None
    size = len(data) if data is not None else path.stat().st_size - header
    if size != n_bytes:
        raise ValueError(f"{path}: idx header promises {dims} of {dtype} ({n_bytes} bytes) but {size} follow")
    if data is not None:
        return np.frombuffer(data, dtype).reshape(dims)
    return np.memmap(path, dtype, "r", offset=header, shape=dims) if n_bytes else np.zeros(dims, dtype)


def _load_fashion_mnist(directory):
    """Images (70000, 28, 28) uint8 and labels (70000,): the 60000 train rows, then the 10000 t10k rows."""
    found = {}  # an uncompressed file wins over its .gz: it is memory-mapped instead of read whole
    for base in _FASHION_FILES:
        found.update({base: p for p in (directory / (base + ".gz"), directory / base) if p.exists()})
    missing = [base for base in _FASHION_FILES if base not in found]
    if missing:
        raise DatasetNotFoundError(
            f"load_dataset('fashion-mnist'): {directory} lacks {', '.join(missing)} (each may end in .gz). "
            f"Get the data with `apt-get install dataset-fashion-mnist`, which puts the idx .gz files in "
            f"{FASHION_MNIST_DIR}/, or pass data_dir= a directory holding train-images-idx3-ubyte(.gz), "
            f"train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz), "
            f"downloaded by hand from {FASHION_MNIST_URL}. Nothing is downloaded at run time.")
    images = [_read_idx(found[f"{s}-images-idx3-ubyte"]) for s in ("train", "t10k")]
    labels = [_read_idx(found[f"{s}-labels-idx1-ubyte"]) for s in ("train", "t10k")]
    return np.concatenate(images), np.concatenate(labels)
