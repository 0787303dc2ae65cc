"""Files of a training run that must survive a kill, a full disk or a hostile download.

Writing: every file goes to a temporary file in the same directory (a name ending in ``.tmp``, never
``.pt``), is flushed and fsync'ed, then renamed over the target with ``os.replace`` (atomic on POSIX), and the
directory is fsync'ed so the rename itself is durable. A reader therefore sees the old file or the new one,
never half of one; a failed write (ENOSPC, a signal) leaves the old file as it was and removes the temporary.

Reading: ``load`` uses ``torch.load(weights_only=True)``, which rebuilds tensors, numbers, strings, lists,
tuples and dicts only, so a file cannot run code on load (a pickle naming ``os.system`` is refused with
``UnsafeCheckpointError``).

A checkpoint is a dict::

    {"format": "dhvc_ext.checkpoint", "format_version": 1,
     "trainer": Trainer.state_dict(),          # config, data shape, network, optimiser, epoch, history, RNG
     "data": {...},                            # where the training data came from and how they were scaled
     "run": {...}}                             # CLI bookkeeping: best epoch and loss, wall time, ...

``trainer_state`` also accepts a bare ``Trainer.state_dict()`` saved with ``torch.save``.
"""
import contextlib
import json
import math
import os
import pickle
import tempfile
import warnings
from pathlib import Path

FORMAT = "dhvc_ext.checkpoint"
FORMAT_VERSION = 1
_TRAINER_KEYS = ("config", "n_features", "model", "epoch")


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message names the file and why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class UnsafeCheckpointError(CheckpointError):
    """``torch.load(weights_only=True)`` refused the file: it pickles objects other than plain data."""


class CorruptCheckpointError(CheckpointError):
    """The file is not a readable torch file, or not a DHVC checkpoint."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory):
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Create or replace ``path`` with what ``write(binary_file)`` writes, atomically (module docstring)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def save(path, obj):
    """``torch.save(obj)`` to ``path`` atomically (path first, like the other writers here)."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def copy(src, dst):
    """Copy the file ``src`` to ``dst`` atomically (best.pt from last.pt without serialising twice)."""
    def write(f):
        with open(src, "rb") as source:
            while chunk := source.read(1 << 20):
                f.write(chunk)

    return atomic_write(dst, write)


def json_safe(value):
    """``value`` with NaN and infinities replaced by None and tuples by lists, so that it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy or torch scalars and arrays
        return json_safe(value.tolist())
    return value


def write_json(path, obj):
    """Write ``obj`` as indented strict JSON, atomically."""
    text = json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_npy(path, array):
    """``numpy.save`` to exactly ``path`` (no ``.npy`` appended), atomically."""
    import numpy as np

    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def load(path):
    """Read a checkpoint with ``torch.load(weights_only=True, map_location="cpu")``.

    Raises ``CheckpointNotFoundError``, ``UnsafeCheckpointError`` (the file pickles code or arbitrary
    objects) or ``CorruptCheckpointError`` (not a torch file, truncated, or not a DHVC checkpoint).
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"no such checkpoint {str(path)!r}")
    if path.is_dir():
        raise CorruptCheckpointError(f"{str(path)!r} is a directory; expected a checkpoint file (.pt)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol of foreign files
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err)
        if "weights only" in reason.lower():
            detail = next((line.strip() for line in reason.splitlines() if "unsupported" in line.lower()), "")
            raise UnsafeCheckpointError(
                f"refused to load {str(path)!r}: it pickles Python objects other than tensors and plain data"
                + (f" ({detail})" if detail else "")
                + "; a DHVC checkpoint never does, and loading it fully could run code from the file") from None
        raise CorruptCheckpointError(f"{str(path)!r} is not a readable torch file ({reason.splitlines()[0]})") from None
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, TypeError, AttributeError) as err:
        first = f"{type(err).__name__}: " + (str(err).splitlines()[0] if str(err) else "the file ends early")
        raise CorruptCheckpointError(f"{str(path)!r} is not a readable torch file ({first})") from None
    trainer_state(obj, path)  # validates
    return obj


def trainer_state(checkpoint, path="checkpoint"):
    """The ``Trainer.state_dict()`` inside a checkpoint (or the checkpoint itself when it is one)."""
    state = checkpoint.get("trainer") if isinstance(checkpoint, dict) and "format" in checkpoint else checkpoint
    if not (isinstance(state, dict) and all(k in state for k in _TRAINER_KEYS) and isinstance(state["config"], dict)):
        keys = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CorruptCheckpointError(f"{str(path)!r} is not a DHVC checkpoint (it holds {keys}; expected a "
                                     f"dict with the trainer's {list(_TRAINER_KEYS)})")
    if isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT \
            and checkpoint.get("format_version", 0) > FORMAT_VERSION:
        raise CorruptCheckpointError(f"{str(path)!r} has checkpoint format {checkpoint['format_version']}; this "
                                     f"dhvc_ext reads format {FORMAT_VERSION} (upgrade dhvc_ext)")
    return state


def make(trainer, *, data=None, run=None):
    """A checkpoint dict of ``trainer`` (see the module docstring)."""
    return dict(format=FORMAT, format_version=FORMAT_VERSION, trainer=trainer.state_dict(),
                data=dict(data or {}), run=dict(run or {}))
