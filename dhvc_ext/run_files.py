"""The files the ``dhvc`` commands read and write: the names in a run directory, data sets (with their errors
turned into exit codes), checkpoints and the trainers they hold, atomic writes, and the refusal to write over
an input.
"""
import contextlib
import dataclasses
import os
import pickle
import platform
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

import dhvc_ext
from dhvc_ext import checkpoint, distributed, ops
from dhvc_ext.exit_codes import (EXIT_FORMAT, EXIT_MISMATCH, EXIT_NONFINITE, EXIT_NOT_FOUND, EXIT_NOT_WRITABLE,
                                 EXIT_SHAPE, EXIT_UNSAFE, EXIT_USAGE, CLIError)
from dhvc_ext.options import SEED_LIMIT


RUN_JSON, LOG, LAST, BEST = "run.json", "log.jsonl", "last.pt", "best.pt"
METRICS, LABELS, PROFILE_TXT, PROFILE_TRACE = "metrics.json", "labels.npy", "profile.txt", "profile_trace.json"
PLOTS = dict(losses="losses.png", metrics="metrics.png", latent="latent_pca.png", confusion="confusion.png",
             sizes="cluster_sizes.png")
RUN_FILES = (RUN_JSON, LOG, LAST, BEST, METRICS, LABELS, PROFILE_TXT, PROFILE_TRACE, *PLOTS.values())
NAMED_DATA = ("digits", "fashion-mnist")


def data_error(err, who):
    """CLIError for an exception raised by ``dhvc_ext.data.load_dataset``."""
    from dhvc_ext import data

    text = re.sub(r"^load_dataset\(.*?\): ", "", str(err)).replace("pass data_dir=", "pass --data-dir")
    if isinstance(err, FileNotFoundError):  # includes DatasetNotFoundError
        return CLIError(EXIT_NOT_FOUND, f"{who}: {text}")
    if isinstance(err, data.NonFiniteDataError):
        return CLIError(EXIT_NONFINITE, f"{who}: {text}")
    if isinstance(err, data.DataShapeError):
        return CLIError(EXIT_SHAPE, f"{who}: {text}")
    if isinstance(err, OSError) and not text:
        text = type(err).__name__
    if "pickled" in text:  # NumPy's advice to load with allow_pickle is not one to give: no code is loaded
        text = "not a NumPy array file, or one holding pickled Python objects (never loaded)"
    return CLIError(EXIT_FORMAT, f"{who}: cannot read the data: {text}")


def load_data(source, scaling, data_dir=None, subset=None, seed=0):
    """``load_dataset`` with its errors turned into ``CLIError``s, and an optional random subset."""
    from dhvc_ext.data import load_dataset

    who = f"--data {source}"
    if source not in NAMED_DATA and not Path(source).exists():
        raise CLIError(EXIT_NOT_FOUND, f"{who}: no such file (and not a named data set: {', '.join(NAMED_DATA)})")
    if data_dir is not None and source != "fashion-mnist":
        raise CLIError(EXIT_USAGE, f"--data-dir is only used with --data fashion-mnist, not {source!r}")
    try:
        dataset = load_dataset(source, scaling=None if scaling == "none" else scaling, data_dir=data_dir)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, struct.error, pickle.UnpicklingError) as err:
        raise data_error(err, who) from None
    if subset is not None:
        if not 1 <= subset <= len(dataset):
            raise CLIError(EXIT_USAGE, f"--subset {subset}: expected 1 <= N <= {len(dataset)}, the rows of {source}")
        dataset = dataset.subset(subset, seed=seed)
    return dataset


@contextlib.contextmanager
def rng_preserved(device):
    """Evaluate without moving torch's random state (a resumed run must see the generator as it was)."""
    state = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def label_scores(y, labels):
    from dhvc_ext.metrics import clustering_scores

    return {k: float(v) for k, v in clustering_scores(y, labels).items()}


def write_or_fail(path, writer, *args):
    """A ``dhvc_ext.checkpoint`` writer with OSError turned into a CLIError (the old file stays intact)."""
    try:
        return writer(path, *args)
    except OSError as err:
        raise CLIError(EXIT_NOT_WRITABLE, f"could not write {path}: {err.strerror or err}; any previous "
                       f"version of {Path(path).name} is intact") from None


def read_files(args, source=None, checkpoint=None):
    """{option: [files]} of the files a command reads: the --config file, a --data file (or the checkpoint's
    recorded data file), the checkpoint."""
    files = {}
    if getattr(args, "config", None):
        files[f"--config {args.config}"] = [Path(args.config)]
    if source is not None and source not in NAMED_DATA:
        files[f"--data {source}" if source == getattr(args, "data", None) else
              f"the checkpoint's training data {source}"] = [Path(source)]
    if checkpoint is not None:
        files[f"--checkpoint {args.checkpoint}"] = [Path(checkpoint)]
    return files


def same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def refuse_overwriting_inputs(outputs, inputs):
    """EXIT_USAGE when a file of ``outputs`` ({option: [files it writes]}) is one that ``inputs`` ({option:
    [files it reads]}) names, or one another output writes too: it would be replaced by the result."""
    outputs = [(option, path) for option, paths in outputs.items() for path in paths]
    for option, path in outputs:
        for source, read in inputs.items():
            for other in read:
                if same_file(path, other):
                    raise CLIError(EXIT_USAGE, f"{option} would write over {other}, which {source} reads; "
                                   "choose another output")
    for i, (option, path) in enumerate(outputs):
        for other_option, other in outputs[:i]:
            if same_file(path, other):
                raise CLIError(EXIT_USAGE, f"{other_option} and {option} would both write {path}; choose two "
                               "files")


def versions():
    return {"dhvc_ext": dhvc_ext.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def cuda_kernels(device):
    return {"built": bool(ops.cuda_available()), "used": device.type == "cuda" and bool(ops.cuda_available())}


def set_threads(threads):
    if threads is not None:
        if threads < 1:
            raise CLIError(EXIT_USAGE, f"--threads {threads}: expected an integer >= 1")
        torch.set_num_threads(threads)


def make_trainer(build, checkpoint=None):
    """Run ``build()`` (a Trainer constructor), turning configuration and device errors into CLIErrors; with
    ``checkpoint`` (its path), a state that does not fit its own model is EXIT_MISMATCH."""
    try:
        return build()
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        text = str(err) or type(err).__name__
        if isinstance(err, RuntimeError) and text.startswith("dhvc_ext: device"):
            raise CLIError(EXIT_USAGE, text) from None
        if checkpoint is None and isinstance(err, ValueError):
            raise CLIError(EXIT_USAGE, text) from None
        if checkpoint is None:
            raise
        lines = text.splitlines()
        first = next((line.strip() for line in lines if "size mismatch" in line), lines[0] if lines else text)
        raise CLIError(EXIT_MISMATCH, f"{checkpoint}: the saved weights do not fit the model its configuration "
                       f"describes; the checkpoint comes from another model shape ({type(err).__name__}: "
                       f"{first.rstrip('.:')})") from None


def load_checkpoint(path):
    """(checkpoint dict, trainer state, file path); a run directory means its last.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    try:
        ckpt = checkpoint.load(path)
    except checkpoint.CheckpointNotFoundError as err:
        raise CLIError(EXIT_NOT_FOUND, str(err)) from None
    except checkpoint.UnsafeCheckpointError as err:
        raise CLIError(EXIT_UNSAFE, str(err)) from None
    except checkpoint.CheckpointError as err:
        raise CLIError(EXIT_FORMAT, str(err)) from None
    return ckpt, checkpoint.trainer_state(ckpt, path), path


def trainer_from_state(state, path, device=None, threads=None):
    from dhvc_ext.train import TrainConfig, Trainer

    # A configuration that is not this TrainConfig's is a damaged or foreign file (EXIT_FORMAT), told apart
    # here from weights that do not fit a valid configuration (EXIT_MISMATCH, in make_trainer).
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(map(str, state["config"])) - fields - {"head_warmstart_steps"})  # see from_state_dict
    if unknown:
        raise CLIError(EXIT_FORMAT, f"{path}: its configuration has fields that TrainConfig does not have "
                       f"({', '.join(unknown)}): not a checkpoint this dhvc_ext wrote")
    try:
        config = TrainConfig(**{k: v for k, v in state["config"].items() if k in fields})
    except (TypeError, ValueError) as err:
        raise CLIError(EXIT_FORMAT, f"{path}: its configuration is invalid ({err})") from None
    if config.seed >= SEED_LIMIT:  # TrainConfig bounds it below only
        raise CLIError(EXIT_FORMAT, f"{path}: its configuration is invalid (seed {config.seed} is beyond 2^32 - 1, "
                       "which the mixture's initialisation cannot take)")
    state = dict(state)
    if threads is not None:
        state["config"] = {**state["config"], "num_threads": threads}
    return make_trainer(lambda: Trainer.from_state_dict(state, device=device), checkpoint=path)


def data_record(dataset, source, scaling, data_dir, subset, seed):
    """What run.json and the checkpoints record about the data (enough to load them again)."""
    if source not in NAMED_DATA:
        source = str(Path(source).resolve())
    return dict(source=source, name=dataset.name, scaling=scaling,
                data_dir=None if data_dir is None else str(Path(data_dir).resolve()), subset=subset,
                subset_seed=seed, n_samples=len(dataset), n_features=dataset.n_features,
                image_shape=None if dataset.image_shape is None else list(dataset.image_shape),
                has_labels=dataset.y is not None)


def scaling_tensors(dataset):
    """The dataset's affine scaling as tensors (a checkpoint holds only what weights_only loading accepts)."""
    return dict(offset=torch.from_numpy(np.array(dataset.offset, dtype=np.float32)),
                scale=torch.from_numpy(np.array(dataset.scale, dtype=np.float32)),
                unit_interval=bool(dataset.unit_interval))


def write_text(path, text):
    return checkpoint.atomic_write(path, lambda f: f.write(text.encode()))


def is_main():
    return distributed.is_main()


def checkpoint_data(args, ckpt, state):
    """The data set to evaluate or predict on, scaled as ``--scaling`` says, with the checkpoint's shape; its
    source; and whether its rows are the training rows, in their order (the run's data and subset)."""
    info = ckpt.get("data", {}) if isinstance(ckpt, dict) and "trainer" in ckpt else {}
    same = args.data is None
    source = args.data or info.get("source")
    if source is None:
        raise CLIError(EXIT_USAGE, "--data is required: the checkpoint does not record its training data")
    data_dir = args.data_dir if args.data_dir is not None else (info.get("data_dir") if same else None)
    scaling = args.scaling or "train"
    subset = getattr(args, "subset", None)
    seed = getattr(args, "seed", None)
    if subset is None and same:
        subset = info.get("subset")
    if seed is None:
        seed = info.get("subset_seed", state["config"].get("seed", 0)) if same else 0
    training_rows = same and subset == info.get("subset") and (
        subset is None or seed == info.get("subset_seed", state["config"].get("seed", 0)))
    train_scaling = scaling == "train" and "offset" in info
    load_scaling = None if train_scaling else ("minmax" if scaling == "train" else scaling)
    dataset = load_data(source, "none" if load_scaling is None else load_scaling, data_dir, subset, seed)
    if dataset.n_features != state["n_features"]:
        raise CLIError(EXIT_MISMATCH, f"the checkpoint's model takes {state['n_features']} features per sample "
                       f"but {source} has {dataset.n_features}: it comes from another model shape")
    if train_scaling:
        offset, scale = (np.asarray(info[k].numpy() if hasattr(info[k], "numpy") else info[k], dtype=np.float32)
                         for k in ("offset", "scale"))
        dataset = dataclasses.replace(dataset, offset=offset, scale=scale, unit_interval=bool(info["unit_interval"]))
    return dataset, source, training_rows


def evaluation_trainer(args):
    ckpt, state, path = load_checkpoint(args.checkpoint)
    set_threads(args.threads)
    dataset, source, training_rows = checkpoint_data(args, ckpt, state)
    trainer = trainer_from_state(state, path, device=args.device, threads=args.threads or torch.get_num_threads())
    return trainer, dataset, source, path, training_rows
