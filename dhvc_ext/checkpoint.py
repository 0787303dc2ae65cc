"""Files of a training run that must survive a kill, a full disk or a hostile download.

Writing: every file goes to a temporary file in the same directory (``.NAME.XXXXXXXX.tmp``, never
``.pt``), is flushed and fsync'ed, then renamed over the target with ``os.replace`` (atomic on POSIX), and the
directory is fsync'ed so the rename itself is durable. A reader therefore sees the old file or the new one,
never half of one; a failed write (ENOSPC) leaves the old file as it was and removes the temporary. SIGINT and
SIGTERM arriving during a write are held until it is complete, then delivered to the handler that was
installed (a handler's exception raised inside ``torch.save``'s C++ writer would otherwise become a second
error). Only ``kill -9`` or a power loss can leave a temporary behind: ``remove_temporaries`` deletes them.

Reading: ``load`` uses ``torch.load(weights_only=True)``, which rebuilds tensors, numbers, strings, lists,
tuples and dicts only, so a file cannot run code on load (a pickle naming ``os.system`` is refused with
``UnsafeCheckpointError``). A file that is not a torch file at all (no zip archive, no pickle) is a
``CorruptCheckpointError``, as is one whose checksum does not match or whose network holds NaN or inf.

A checkpoint is a dict::

    {"format": "dhvc_ext.checkpoint", "format_version": 2,
     "trainer": Trainer.state_dict(),          # config, data shape, network, optimiser, epoch, history, RNG
     "data": {...},                            # where the training data came from and how they were scaled
     "run": {...},                             # CLI bookkeeping: best epoch and loss, wall time, ...
     "checksum": "sha256:..."}                 # of everything above, tensor bytes included (``save`` adds it)

A flipped bit in a tensor's bytes is invisible to torch's zip reader; the checksum, verified by ``load``, is
what catches it. Format 1 (no checksum) is still read. ``trainer_state`` also accepts a bare
``Trainer.state_dict()`` saved with ``torch.save``.
"""
import contextlib
import glob
import hashlib
import json
import math
import os
import pickle
import signal
import tempfile
import threading
import warnings
from pathlib import Path

FORMAT = "dhvc_ext.checkpoint"
FORMAT_VERSION = 2  # 2: a checksum; 1: none
_TRAINER_KEYS = ("config", "n_features", "model", "epoch")
# What a torch file starts with: a zip archive (torch >= 1.6), or a pickle (the legacy format, protocol 2).
_TORCH_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x80")


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message names the file and why."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class UnsafeCheckpointError(CheckpointError):
    """``torch.load(weights_only=True)`` refused the file: it pickles objects other than plain data."""


class CorruptCheckpointError(CheckpointError):
    """The file is not a readable torch file, not a DHVC checkpoint, or fails its checksum."""


class NonFiniteCheckpointError(CorruptCheckpointError):
    """The checkpoint's network holds NaN or inf: every prediction from it would be meaningless."""


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


@contextlib.contextmanager
def signals_held(signals=(signal.SIGINT, signal.SIGTERM)):
    """Hold ``signals`` that arrive inside the block; when it ends, restore the handlers that were installed
    and deliver each held signal to them once (``signal.raise_signal``), even when the block raised. Outside
    the main thread, where Python runs no signal handler, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = {s: signal.getsignal(s) for s in signals}
    previous = {s: h for s, h in previous.items() if h is not None}  # None: a handler set from C, left alone
    for s in previous:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)


def _temporary_prefix(name):
    return f".{name}."


def atomic_write(path, write):
    """Create or replace ``path`` with what ``write(binary_file)`` writes, atomically, with SIGINT and SIGTERM
    held until it is done (module docstring)."""
    path = Path(path)
    with signals_held():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path.name), suffix=".tmp")
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


def remove_temporaries(directory, names):
    """Delete the temporaries that writes to ``directory/NAME`` (NAME in ``names``) left when the process was
    killed with SIGKILL in the middle of one; returns the names of the files removed."""
    directory, removed = Path(directory), []
    for name in names:
        for tmp in directory.glob(f"{glob.escape(_temporary_prefix(name))}*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp.name)
    return removed


def _is_checkpoint(obj):
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def checksum(obj):
    """"sha256:<hex>" of a checkpoint dict without its "checksum" key: the bytes, dtype and shape of every
    tensor and the repr of every other value, walked in order (dict order survives torch.save and load)."""
    import torch

    h = hashlib.sha256()

    def feed(value):
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(value.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().data)
        elif isinstance(value, dict):
            h.update(f"D{len(value)}:".encode())
            for k, v in value.items():
                feed(k)
                feed(v)
        elif isinstance(value, (list, tuple)):
            h.update(f"{type(value).__name__}{len(value)}:".encode())
            for v in value:
                feed(v)
        else:
            h.update(f"{type(value).__name__}:{value!r};".encode())

    feed({k: v for k, v in obj.items() if k != "checksum"})
    return "sha256:" + h.hexdigest()


def save(path, obj):
    """``torch.save(obj)`` to ``path`` atomically (path first, like the other writers here). A checkpoint
    dict (``make``) is saved with its ``checksum``, computed afresh."""
    import torch

    if _is_checkpoint(obj):
        obj = {**{k: v for k, v in obj.items() if k != "checksum"}, "checksum": checksum(obj)}
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
    objects) or ``CorruptCheckpointError`` (not a torch file, truncated, not a DHVC checkpoint, a checksum
    that does not match; ``NonFiniteCheckpointError``: NaN or inf in the network).
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"no such checkpoint {str(path)!r}")
    if path.is_dir():
        raise CorruptCheckpointError(f"{str(path)!r} is a directory; expected a checkpoint file (.pt)")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise CorruptCheckpointError(f"{str(path)!r} cannot be read ({err.strerror or err})") from None
    if not head.startswith(_TORCH_MAGIC):
        # Not a zip archive and not a pickle: torch.load would report the weights-only unpickler's refusal
        # of its first byte, which reads as a file that pickles code. It is just not a torch file.
        raise CorruptCheckpointError(f"{str(path)!r} is not a torch file (it begins with bytes {head.hex()}; a "
                                     "DHVC checkpoint is the zip archive that torch.save writes)")
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
    state = trainer_state(obj, path)  # validates
    if _is_checkpoint(obj):
        if "checksum" in obj or obj.get("format_version", 1) >= 2:
            if obj.get("checksum") != checksum(obj):
                raise CorruptCheckpointError(f"{str(path)!r} fails its checksum: its contents changed after it "
                                             "was written (a damaged disk, file or copy)")
    _check_finite(state, path)
    return obj


def _check_finite(state, path):
    import torch

    model = state.get("model")
    for name, value in (model.items() if isinstance(model, dict) else ()):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise NonFiniteCheckpointError(f"{str(path)!r} holds a network with non-finite parameters ({bad} of "
                                           f"{value.numel()} values of {name} are NaN or inf); predictions from "
                                           "it would be meaningless")


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
