"""The ``dhvc`` command (also ``python -m dhvc_ext``): train, evaluate and predict DHVC clusterings, and
benchmark the kernels.

    dhvc train --data digits --clusters 10 --out runs/digits     # a new run
    dhvc train --resume runs/digits                              # continue it exactly, no other flags needed
    dhvc evaluate --checkpoint runs/digits/best.pt               # scores on the run's data (or --data ...)
    dhvc predict --checkpoint runs/digits --data new.npy --output labels.npy
    dhvc bench                                                   # kernel benchmarks, ours vs the references

Options come from three places, later ones winning: the built-in defaults, ``--config FILE`` (TOML, YAML or
JSON; keys are the option names, with - or _, e.g. ``latent-dim = 8``, or ``TrainConfig`` field names such as
``n_clusters``; a file may instead hold one table per command, ``[train]``, ``[predict]``...), and the flags.

A run directory (``--out DIR``) holds:
    run.json            the command, the data source and scaling, the full configuration (what --resume reads)
    log.jsonl           one JSON object per epoch: phase, each loss term, samples/s, seconds, and the scores
                        against the labels where computed (--metrics-every)
    last.pt, best.pt    checkpoints (``dhvc_ext.checkpoint``), written atomically after every epoch: the last
                        epoch, and the joint-training epoch with the lowest training loss (no labels involved)
    metrics.json        at the end: acc, nmi, ari (when the data have labels) of the final model for both
                        prediction rules, n_samples, n_clusters, seconds, the configuration, the versions of
                        torch and dhvc_ext, the device and whether the CUDA kernels were used
    labels.npy          the final model's cluster of every sample (int64)
    *.png               losses, metrics (per-epoch scores), latent_pca, confusion, cluster_sizes
    profile.txt, profile_trace.json   with --profile

SIGINT (Ctrl-C) and SIGTERM stop training at once; last.pt keeps the run as it was after the last complete
epoch (the unfinished epoch is dropped, so that ``--resume`` repeats it exactly) and the command exits with
130 or 143. Errors a user can cause print one line on stderr and exit with the codes below, before anything
already written is touched.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
import textwrap
import time
from pathlib import Path

__all__ = ["EXIT_CODES", "main"]

# Exit codes. 128 + N for signal N follows the shell's convention.
EXIT_OK = 0
EXIT_INTERNAL = 1      # a bug (Python's traceback) or a failed benchmark run
EXIT_USAGE = 2         # a bad option or configuration value (argparse uses 2 as well)
EXIT_NOT_FOUND = 3     # a data set, checkpoint, config file, run directory or benchmarks/ that is not there
EXIT_FORMAT = 4        # a file that cannot be read as what it should be (data, config, checkpoint)
EXIT_SHAPE = 5         # data of the wrong shape (rank, empty, labels not one per row)
EXIT_NONFINITE = 6     # NaN or inf in the data
EXIT_TOO_FEW = 7       # more clusters than samples
EXIT_NOT_WRITABLE = 8  # an output directory or file that cannot be written (or a full disk)
EXIT_MISMATCH = 9      # a checkpoint that does not fit the data or the run (another model shape)
EXIT_UNSAFE = 10       # a checkpoint refused by torch.load(weights_only=True): it pickles code or objects
EXIT_DIVERGED = 11     # training produced a non-finite loss
EXIT_EXISTS = 12       # --out already holds a run (continue it with --resume, or pass --overwrite)
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

EXIT_CODES = {name: value for name, value in globals().items() if name.startswith("EXIT_")}

RUN_JSON, LOG, LAST, BEST = "run.json", "log.jsonl", "last.pt", "best.pt"
METRICS, LABELS, PROFILE_TXT, PROFILE_TRACE = "metrics.json", "labels.npy", "profile.txt", "profile_trace.json"
PLOTS = dict(losses="losses.png", metrics="metrics.png", latent="latent_pca.png", confusion="confusion.png",
             sizes="cluster_sizes.png")
RUN_FILES = (RUN_JSON, LOG, LAST, BEST, METRICS, LABELS, PROFILE_TXT, PROFILE_TRACE, *PLOTS.values())
NAMED_DATA = ("digits", "fashion-mnist")
SCORES = ("acc", "nmi", "ari")
#: Per-epoch scores are computed every epoch up to this many samples, every 5th joint epoch beyond.
METRICS_EVERY_EPOCH_UP_TO = 20000


class CLIError(Exception):
    """A user error: ``message`` goes to stderr as one line and ``code`` becomes the exit status."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, " ".join(str(message).split())


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException so that no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ----------------------------------------------------------------------------------------------------------
# options

# TrainConfig fields as flags: field -> (flag, argparse keywords, help). The defaults shown in --help are read
# from TrainConfig itself.
_TRAIN_FIELDS = {
    "n_clusters": ("--clusters", dict(type=int, metavar="K"), "number of clusters K (required for a new run)"),
    "latent_dim": ("--latent-dim", dict(type=int, metavar="D"),
                   "size of the latent vectors: codes lie on the unit sphere S^(D-1) in R^D"),
    "hidden": ("--hidden", dict(type=int, nargs="+", metavar="N"),
               "widths of the MLP encoder's hidden layers; the decoder mirrors them (unused by --arch conv)"),
    "arch": ("--arch", dict(choices=("mlp", "conv")), "network: mlp, or conv for images (28x28-like data)"),
    "likelihood": ("--likelihood", dict(choices=("auto", "bernoulli", "gaussian")),
                   "decoder likelihood; auto is bernoulli for data scaled to [0, 1], else gaussian"),
    "kappa_min": ("--kappa-min", dict(type=float, metavar="X"),
                  "lower bound of the posterior concentration kappa (S-VAE uses 1)"),
    "head": ("--head", dict(choices=("separate", "mixture")),
             "q(c|x): a separate linear head on mu_x, or the mixture posterior p(c|mu_x) itself"),
    "beta": ("--beta", dict(type=float, metavar="X"), "weight of KL(q(z|x) || uniform) in joint training"),
    "alpha": ("--alpha", dict(type=float, metavar="X"), "weight of the KL between q(c|x) and p(c|z)"),
    "eta": ("--eta", dict(type=float, metavar="X"), "weight of the extended mutual information term"),
    "lam": ("--lam", dict(type=float, metavar="X"),
            "weight of H(C) inside the extended mutual information (1: plain MI; larger: more balanced clusters)"),
    "kl_direction": ("--kl-direction", dict(choices=("forward", "reverse")),
                     "forward KL(q(c|x) || p(c|z)) or reverse KL(p(c|z) || q(c|x))"),
    "gamma": ("--gamma", dict(type=float, metavar="X"),
              "weight of the neighbour term (our addition to the objective; needs --neighbors > 0)"),
    "neighbors": ("--neighbors", dict(type=int, metavar="K"),
                  "latent nearest neighbours per row whose sharpened q(c|x) is each row's target in the neighbour "
                  "term (0: off, the objective of METHOD.md alone)"),
    "neighbor_space": ("--neighbor-space", dict(choices=("input", "latent")),
                       "where the neighbour term's neighbours are found: the scaled input rows, or the "
                       "pretrained encoder's latent means"),
    "pretrain_epochs": ("--pretrain-epochs", dict(type=int, metavar="N"),
                        "epochs of autoencoder (S-VAE) pretraining before the mixture is fitted"),
    "pretrain_beta": ("--pretrain-beta", dict(type=float, metavar="X"),
                      "weight of KL(q(z|x) || uniform) during pretraining"),
    "epochs": ("--epochs", dict(type=int, metavar="N"),
               "epochs of joint training after pretraining (0: autoencoder + vMF mixture only)"),
    "batch_size": ("--batch-size", dict(type=int, metavar="B"),
                   "samples per optimisation step (default: min(256, max(16, n / 32)), at least 32 steps per epoch)"),
    "pretrain_lr": ("--pretrain-lr", dict(type=float, metavar="X"), "Adam learning rate of pretraining"),
    "lr": ("--lr", dict(type=float, metavar="X"), "Adam learning rate of joint training"),
    "lr_decay": ("--lr-decay", dict(type=float, metavar="X"),
                 "factor applied to the joint learning rate every --lr-step epochs"),
    "lr_step": ("--lr-step", dict(type=int, metavar="N"), "epochs between learning-rate decays"),
    "grad_clip": ("--grad-clip", dict(type=float, metavar="X"),
                  "clip the gradient norm of each step to X (0: no clipping)"),
    "mixture_update": ("--mixture-update", dict(choices=("em", "gradient")),
                       "how the vMF mixture follows the encoder: periodic EM refresh, or gradient descent"),
    "em_every": ("--em-every", dict(type=int, metavar="N"), "joint epochs between EM refreshes (--mixture-update em)"),
    "em_iters": ("--em-iters", dict(type=int, metavar="N"), "EM steps per refresh"),
    "mixture_lr_scale": ("--mixture-lr-scale", dict(type=float, metavar="X"),
                         "mixture learning rate as a multiple of --lr (--mixture-update gradient)"),
    "mixture_fit_on": ("--mixture-fit-on", dict(choices=("samples", "means")),
                       "fit the mixture to posterior samples z or to the means mu_x"),
    "mixture_n_init": ("--mixture-n-init", dict(type=int, metavar="N"),
                       "k-means++ restarts of the initial mixture fit (the best log-likelihood is kept)"),
    "head_init": ("--head-init", dict(choices=("mixture", "random")),
                  "start the cluster head as p(c|mu_x) of the fitted mixture (exactly), or leave it random"),
    "cluster_init": ("--cluster-init", dict(choices=("mixture", "manifold")),
                     "start the clusters from the vMF mixture fitted to the codes, or from a consensus of UMAP + "
                     "GMM runs on the input rows (needs umap-learn)"),
    "manifold_runs": ("--manifold-runs", dict(type=int, metavar="N"),
                      "UMAP + GMM runs in the consensus of --cluster-init manifold"),
    "predict_with": ("--predict-with", dict(choices=("head", "mixture")),
                     "prediction rule: argmax q(c|x) (head) or argmax p(c|mu_x) (mixture)"),
    "seed": ("--seed", dict(type=int, metavar="N"),
             "random seed (network, sampler, batch order, mixture start and --subset)"),
    "device": ("--device", dict(metavar="DEV"), "auto, cpu, cuda or cuda:N (auto: CUDA when usable)"),
    "bf16": ("--bf16", dict(action=argparse.BooleanOptionalAction), "bfloat16 autocast (CUDA only)"),
    "num_threads": ("--threads", dict(type=int, metavar="N"),
                    "torch CPU threads (default: torch's; recorded, so a resumed run uses the same count and "
                    "repeats the run bit for bit)"),
}


def _train_fields():
    """[(TrainConfig field, flag, argparse keywords, help, default)] for every field of TrainConfig: those of
    ``_TRAIN_FIELDS`` as written there, any other (a field added later) with a flag and type derived from its
    name and default, so that the command line never lags behind the configuration."""
    from dhvc_ext.train import TrainConfig

    fields = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in _TRAIN_FIELDS:
            flag, kwargs, help_text = _TRAIN_FIELDS[f.name]
        else:
            flag, default = "--" + f.name.replace("_", "-"), f.default
            if isinstance(default, bool):
                kwargs = dict(action=argparse.BooleanOptionalAction)
            elif isinstance(default, (tuple, list)):
                kwargs = dict(type=type(default[0]) if default else str, nargs="+")
            else:
                kwargs = dict(type=str if default is None else type(default))
            help_text = f"TrainConfig.{f.name} (see dhvc_ext.train.TrainConfig)"
        fields.append((f.name, flag, kwargs, help_text, f.default))
    return fields


# Options that may accompany --resume: they change how the run executes or reports, not what it computes
# (except --threads and --device, which change the floating-point summation order: allowed, but the result
# may then differ in the last bits from an uninterrupted run).
_RESUME_OVERRIDES = ("resume", "device", "threads", "progress", "quiet", "plots", "metrics_every")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``dhvc train: error: ...``) and the usage hint on a second line."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def _default_text(value):
    if value is None:
        return "torch's"
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return str(value)


def _build_parser():
    """The parser, and per command the map option name -> argparse action (what --config keys may name)."""
    parser = _Parser(prog="dhvc", description="Deep clustering on the hypersphere (DHVC): train, evaluate and "
                     "predict from the command line, and benchmark the kernels.",
                     epilog="Exit codes: " + ", ".join(f"{v} {k[5:].lower().replace('_', ' ')}"
                                                         for k, v in EXIT_CODES.items()) + ".")
    parser.add_argument("--version", action="version", version=f"dhvc {_package_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    options = {}

    def command(name, help_text, description, epilog=None):
        p = sub.add_parser(name, help=help_text, description=description, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        options[name] = {}
        p.set_defaults(command=name)
        return p

    def add(p, group, *flags, dest=None, **kwargs):
        action = group.add_argument(*flags, dest=dest, default=None, **kwargs)
        options[p.prog.split()[-1]][action.dest] = action
        return action

    def data_options(p, group, default_note):
        add(p, group, "--data", metavar="SOURCE", help="digits, fashion-mnist, or a file: .npz (X, optional y), "
            f".npy, .csv (header optional, a column y or label holds labels), idx (*-ubyte[.gz]){default_note}")
        add(p, group, "--data-dir", metavar="DIR", help="directory holding the Fashion-MNIST idx files (default "
            "/usr/share/datasets/fashion-mnist, from `apt-get install dataset-fashion-mnist`)")

    def config_option(p):
        add(p, p, "--config", metavar="FILE", help="read options from a TOML, YAML or JSON file; flags given on "
            "the command line win")

    # -- train
    train = command("train", "train a DHVC model (or continue one with --resume)",
                    "Train DHVC on a data set: S-VAE pretraining, vMF mixture fit, joint training.\n\n"
                    "  dhvc train --data digits --clusters 10 --out runs/digits\n"
                    "  dhvc train --resume runs/digits",
                    epilog=textwrap.fill(
                        f"--out DIR receives {RUN_JSON} (data and configuration), {LOG} (one JSON object per "
                        f"epoch), {LAST} and {BEST} (checkpoints, written atomically every epoch), and at the end "
                        f"{METRICS}, {LABELS} and the plots {', '.join(PLOTS.values())}. Ctrl-C or SIGTERM keeps "
                        f"the last complete epoch in {LAST} and exits with {EXIT_SIGINT} or {EXIT_SIGTERM}; "
                        "`dhvc train --resume DIR` continues exactly.", 79))
    config_option(train)
    g = train.add_argument_group("data")
    data_options(train, g, "")
    add(train, g, "--scaling", choices=("minmax", "standard", "none"),
        help="feature scaling: minmax to [0, 1] (default), standard (mean 0, std 1), none")
    add(train, g, "--subset", type=int, metavar="N", help="train on N random rows (chosen by --seed): quick runs")
    g = train.add_argument_group("run directory")
    add(train, g, "--out", metavar="DIR", help="directory for checkpoints, logs, metrics and plots (created)")
    add(train, g, "--resume", metavar="DIR", help="continue the run in DIR exactly where its last.pt stopped, "
        "with its saved data and configuration (only --device, --threads, --progress, --quiet, --plots and "
        "--metrics-every may be added)")
    add(train, g, "--overwrite", action="store_true", help="start a new run in an --out that already holds one "
        "(its files are replaced)")
    g = train.add_argument_group("model and schedule (defaults: dhvc_ext.train.TrainConfig)")
    for field, flag, kwargs, help_text, default in _train_fields():
        add(train, g, flag, dest=flag[2:].replace("-", "_"), **kwargs,
            help=help_text if field == "n_clusters" else f"{help_text} (default: {_default_text(default)})")
    g = train.add_argument_group("reporting")
    add(train, g, "--metrics-every", type=int, metavar="N", help="score against the labels (when the data have "
        "them) every N joint epochs, for the metrics plot and the log; each costs a prediction pass over the "
        f"data. 0: never (default: 1 up to {METRICS_EVERY_EPOCH_UP_TO} samples, else 5)")
    add(train, g, "--plots", action=argparse.BooleanOptionalAction, help="write the PNG plots (default: yes)")
    add(train, g, "--progress", action=argparse.BooleanOptionalAction, help="tqdm progress bars with each loss "
        "term and samples/s (default: when stderr is a terminal; otherwise one line per epoch)")
    add(train, g, "--quiet", action="store_true", help="no progress bars and no per-epoch lines")
    add(train, g, "--profile", action="store_true", help="before training, profile a few steps of each phase "
        f"(on a copy of the model) with torch.profiler: DIR/{PROFILE_TXT} (table, share in dhvc_ext ops) and "
        f"DIR/{PROFILE_TRACE} (open in chrome://tracing or ui.perfetto.dev)")
    add(train, g, "--profile-steps", type=int, metavar="N", help="training steps profiled per phase (default 10)")

    # -- evaluate and predict
    for name, help_text in (("evaluate", "score a checkpoint on a data set"),
                            ("predict", "write the cluster of every sample of a data set")):
        p = command(name, help_text, help_text[0].upper() + help_text[1:] + " with a trained checkpoint.")
        config_option(p)
        add(p, p, "--checkpoint", metavar="FILE", help="a checkpoint (.pt), or a run directory (its last.pt)")
        g = p.add_argument_group("data")
        data_options(p, g, " (default: the data the checkpoint was trained on)")
        add(p, g, "--scaling", choices=("train", "minmax", "standard", "none"),
            help="train: scale as the training data were (default); or scale these data by their own statistics")
        add(p, p, "--which", choices=("head", "mixture"),
            help="prediction rule (default: the checkpoint's --predict-with)")
        add(p, p, "--device", metavar="DEV", help="auto, cpu, cuda or cuda:N (default: auto)")
        add(p, p, "--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
        if name == "evaluate":
            add(p, g, "--subset", type=int, metavar="N", help="score N random rows (default: the training subset "
                "when --data is not given, else all rows)")
            add(p, g, "--seed", type=int, metavar="N", help="seed of --subset (default: the run's seed)")
            add(p, p, "--out", metavar="DIR", help="also write evaluation.json and the plots to DIR")
            add(p, p, "--json", action="store_true", help="print the result as one JSON object")
        else:
            add(p, p, "--output", metavar="FILE", help="where to write the labels (.npy, int64, one per row)")
            add(p, p, "--proba", metavar="FILE", help="also write the (N, K) cluster probabilities (.npy, float32)")

    # -- bench
    p = command("bench", "run the kernel benchmarks and print ours against the references",
                "Run the pytest-benchmark files of the source tree (benchmarks/) and summarise them with "
                "benchmarks/summarize.py: ours against SciPy and plain PyTorch.")
    config_option(p)
    add(p, p, "--only", nargs="+", choices=("bessel", "vmf", "vmfmm"),
        help="benchmark files to run (default: all three)")
    add(p, p, "-k", dest="k", metavar="EXPR", help="pytest -k expression selecting benchmarks")
    add(p, p, "--json", metavar="FILE", help="keep pytest-benchmark's JSON report in FILE")
    add(p, p, "--markdown", metavar="FILE", help="also write the summary table to FILE")
    add(p, p, "--benchmarks-dir", metavar="DIR", help="the benchmarks/ directory (default: the one beside the "
        "dhvc_ext package, present in a source checkout only)")
    return parser, options


def _package_version():
    try:
        from importlib.metadata import version

        return version("dhvc-ext")
    except Exception:  # not installed as a distribution (e.g. run from a copy of the tree)
        return "unknown"


#: The largest seed + 1: the mixture's initialisation seeds NumPy's RandomState, which takes 32 bits.
SEED_LIMIT = 2**32


def _check_paths(args, actions):
    """A file or directory option given as the empty string (which would name the working directory)."""
    for dest, action in actions.items():
        if action.metavar in ("FILE", "DIR", "SOURCE") and getattr(args, dest, None) == "":
            raise CLIError(EXIT_USAGE, f"{action.option_strings[0]} '': expected a path")


def _check_arguments(args, actions):
    """Checks of options, flags and --config alike, made before anything is read or written."""
    _check_paths(args, actions)
    if getattr(args, "quiet", None) and getattr(args, "progress", None):
        raise CLIError(EXIT_USAGE, "--quiet and --progress contradict each other; pass one of them")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise CLIError(EXIT_USAGE, f"--seed {seed}: expected an integer 0 <= N < 2^32")
    if getattr(args, "device", None) is not None:
        _check_device(args.device)


def _check_device(device):
    """--device: auto, cpu, cuda or cuda:N, usable on this machine (else EXIT_USAGE)."""
    import torch

    from dhvc_ext.train import resolve_device

    if device == "auto":
        return
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        raise CLIError(EXIT_USAGE, f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    try:
        resolved = resolve_device(device)
    except RuntimeError as err:
        raise CLIError(EXIT_USAGE, f"--device {device}: {err}") from None
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise CLIError(EXIT_USAGE, f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                       f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


# ----------------------------------------------------------------------------------------------------------
# --config files

def _read_config(path, command):
    """The mappings of options in a TOML, YAML or JSON file, and whether it has per-command tables: [the
    file's mapping], or [its keys outside the tables, the table named ``command``] (the table's keys win)."""
    path = Path(path)
    if not path.exists():
        raise CLIError(EXIT_NOT_FOUND, f"--config {str(path)!r}: no such file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text()
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise CLIError(EXIT_FORMAT, f"--config {str(path)!r}: reading YAML needs PyYAML (pip install "
                               "pyyaml); or write the file as TOML") from None
            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise CLIError(EXIT_FORMAT, f"--config {str(path)!r}: unknown file type {path.suffix!r}; expected "
                           ".toml, .yaml, .yml or .json")
    except CLIError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise CLIError(EXIT_FORMAT, f"--config {str(path)!r}: cannot read it ({err})") from None
    except Exception as err:  # the parsers' own error classes (TOMLDecodeError, YAMLError, JSONDecodeError)
        raise CLIError(EXIT_FORMAT, f"--config {str(path)!r}: not valid {suffix[1:].upper()}: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CLIError(EXIT_FORMAT, f"--config {str(path)!r}: expected a mapping of option names to values, "
                       f"got a {type(data).__name__}")
    commands = ("train", "evaluate", "predict", "bench")
    if not any(isinstance(data.get(c), dict) for c in commands):
        return [data], False
    shared = {k: v for k, v in data.items() if k not in commands}
    return [shared, data.get(command) or {}], True


def _convert(action, key, value, where):
    """A config file's ``value`` for option ``key`` checked and converted as the flag would be."""
    def fail(expected):
        raise CLIError(EXIT_USAGE, f"{where}: {key} = {value!r}: expected {expected}")

    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            fail("true or false")
        return value

    def one(item):
        kind = action.type or str
        if isinstance(item, bool) or isinstance(item, (dict, list)):
            fail(f"a {kind.__name__}")
        if kind is int:
            if isinstance(item, float) or not isinstance(item, (int, str)):
                fail("an integer")
        try:
            item = kind(item)
        except (TypeError, ValueError):
            fail(f"a {kind.__name__}")
        if action.choices is not None and item not in action.choices:
            fail("one of " + ", ".join(map(str, action.choices)))
        return item

    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        if not items:
            fail("a non-empty list")
        return [one(item) for item in items]
    return one(value)


def _apply_config(args, actions, all_actions):
    """Fill the options not given on the command line from ``--config``. In a file with per-command tables,
    the keys outside the tables are shared: each command takes those it has."""
    if getattr(args, "config", None) is None:
        return
    where = f"--config {args.config}"
    aliases = {field: flag[2:].replace("-", "_") for field, flag, *_ in _train_fields()}
    levels, sectioned = _read_config(args.config, args.command)
    known_elsewhere = {k for other in all_actions.values() for k in other} | set(aliases)

    def option(raw_key):
        key = str(raw_key).replace("-", "_")
        return key if key in actions else aliases.get(key, key)

    values = {}  # option -> (key as written, value); a table's keys replace the shared ones
    for level in levels:
        spelled = {}
        for raw_key, value in level.items():
            key = option(raw_key)
            if key in spelled:
                raise CLIError(EXIT_USAGE, f"{where}: {spelled[key]!r} and {raw_key!r} are the same option; "
                               "keep one")
            spelled[key] = raw_key
            values[key] = (raw_key, value)
    for key, (raw_key, value) in values.items():
        if sectioned and key not in actions and key in known_elsewhere:
            continue  # a shared key for another command
        if key not in actions or key == "config":
            valid = sorted(k for k in actions if k != "config")
            raise CLIError(EXIT_USAGE, f"{where}: unknown option {raw_key!r} for dhvc {args.command} "
                           f"(valid: {', '.join(valid)})")
        if getattr(args, key) is None:
            setattr(args, key, _convert(actions[key], raw_key, value, where))


# ----------------------------------------------------------------------------------------------------------
# data

def _classify_data_error(err, who):
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


def _load_data(source, scaling, data_dir=None, subset=None, seed=0):
    """``load_dataset`` with its errors turned into ``CLIError``s, and an optional random subset."""
    import pickle
    import struct
    import zipfile

    from dhvc_ext.data import load_dataset

    who = f"--data {source}"
    if source not in NAMED_DATA and not Path(source).exists():
        raise CLIError(EXIT_NOT_FOUND, f"{who}: no such file (and not a named data set: {', '.join(NAMED_DATA)})")
    if data_dir is not None and source != "fashion-mnist":
        raise CLIError(EXIT_USAGE, f"--data-dir is only used with --data fashion-mnist, not {source!r}")
    try:
        dataset = load_dataset(source, scaling=None if scaling == "none" else scaling, data_dir=data_dir)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, struct.error, pickle.UnpicklingError) as err:
        raise _classify_data_error(err, who) from None
    if subset is not None:
        if not 1 <= subset <= len(dataset):
            raise CLIError(EXIT_USAGE, f"--subset {subset}: expected 1 <= N <= {len(dataset)}, the rows of {source}")
        dataset = dataset.subset(subset, seed=seed)
    return dataset


def _describe(dataset):
    classes = "" if dataset.y is None else f", {len(set(dataset.y.tolist()))} classes"
    return f"{dataset.name} ({len(dataset)} x {dataset.n_features}{classes})"


# ----------------------------------------------------------------------------------------------------------
# signals, progress, small helpers

class _SignalGuard:
    """While installed, SIGINT and SIGTERM raise ``_Interrupted`` in the main thread; inside ``critical()``
    (writing a checkpoint and its log line) they are held until the block ends."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.pending, self.depth, self.fired, self.previous = None, 0, False, {}

    def __enter__(self):
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread (e.g. main() called from a worker thread): leave signals alone
            self.previous = {}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False

    def _handle(self, signum, frame):
        if self.fired:
            return  # the first one is being handled; the exit follows at once
        if self.depth:
            self.pending = signum
            return
        self.fired = True
        raise _Interrupted(signum)

    @contextlib.contextmanager
    def critical(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None and not self.fired:
            self.fired = True
            raise _Interrupted(self.pending)


def _format_terms(record, terms):
    return "  ".join(f"{t} {record[t]:.4g}" for t in terms if t in record)


class _Bars:
    """tqdm bars: one over epochs (each loss term of the last epoch and its samples/s), one over the samples
    of the current epoch (running means of each loss term; tqdm's rate is samples/s).

    ``batch_done`` is ``Trainer.fit``'s batch callback (the batch's loss terms after each step).
    """

    def __init__(self, trainer, n_samples):
        from dhvc_ext.models import LOSS_TERMS

        self.trainer, self.terms = trainer, LOSS_TERMS
        bs = trainer.batch_size(n_samples)
        self.per_epoch = n_samples - n_samples % bs if n_samples > bs else n_samples  # drop_last, as fit does
        self._epoch, self._sums, self._seen = None, {}, 0

    def __enter__(self):
        from tqdm import tqdm

        cfg = self.trainer.config
        self.epochs = tqdm(total=cfg.total_epochs, initial=self.trainer.epoch, desc="DHVC", unit="epoch",
                           position=0, dynamic_ncols=True, file=sys.stderr)
        self.batches = tqdm(total=self.per_epoch, desc="", unit="sample", position=1,
                            leave=False, dynamic_ncols=True, file=sys.stderr)
        return self

    def __exit__(self, *exc):
        self.batches.close()
        self.epochs.close()
        return False

    def batch_done(self, trainer, phase, b, terms):
        if trainer.epoch != self._epoch:
            self._epoch, self._sums, self._seen = trainer.epoch, dict.fromkeys(self.terms, 0.0), 0
            self.batches.reset(total=self.per_epoch)
            self.batches.set_description(f"{phase} {trainer.epoch + 1}/{trainer.config.total_epochs}")
        for t in self.terms:
            self._sums[t] += terms[t] * b
        self._seen += b
        self.batches.set_postfix_str(_format_terms({t: s / self._seen for t, s in self._sums.items()}, self.terms),
                                     refresh=False)
        self.batches.update(b)

    def epoch_done(self, entry):
        scores = "  ".join(f"{s} {entry[s]:.3f}" for s in SCORES if entry.get(s) is not None)
        self.epochs.set_postfix_str(f"{entry['phase']}  {_format_terms(entry, self.terms)}  "
                                    f"{entry['samples_per_s']:.0f} samples/s" + (f"  {scores}" if scores else ""),
                                    refresh=False)
        self.epochs.update(1)


@contextlib.contextmanager
def _rng_preserved(device):
    """Evaluate without moving torch's random state (a resumed run must see the generator as it was)."""
    import torch

    state = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def _scores(y, labels):
    from dhvc_ext.metrics import clustering_scores

    return {k: float(v) for k, v in clustering_scores(y, labels).items()}


def _write(path, writer, *args):
    """A ``dhvc_ext.checkpoint`` writer with OSError turned into a CLIError (the old file stays intact)."""
    try:
        return writer(path, *args)
    except OSError as err:
        raise CLIError(EXIT_NOT_WRITABLE, f"could not write {path}: {err.strerror or err}; any previous "
                       f"version of {Path(path).name} is intact") from None


def _read_files(args, source=None, checkpoint=None):
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


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def _refuse_overwriting_inputs(outputs, inputs):
    """EXIT_USAGE when a file of ``outputs`` ({option: [files it writes]}) is one that ``inputs`` ({option:
    [files it reads]}) names, or one another output writes too: it would be replaced by the result."""
    outputs = [(option, path) for option, paths in outputs.items() for path in paths]
    for option, path in outputs:
        for source, read in inputs.items():
            for other in read:
                if _same_file(path, other):
                    raise CLIError(EXIT_USAGE, f"{option} would write over {other}, which {source} reads; "
                                   "choose another output")
    for i, (option, path) in enumerate(outputs):
        for other_option, other in outputs[:i]:
            if _same_file(path, other):
                raise CLIError(EXIT_USAGE, f"{other_option} and {option} would both write {path}; choose two "
                               "files")


def _versions():
    import platform

    import numpy as np
    import torch

    import dhvc_ext

    return {"dhvc_ext": dhvc_ext.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _cuda_kernels(device):
    from dhvc_ext import ops

    return {"built": bool(ops.cuda_available()), "used": device.type == "cuda" and bool(ops.cuda_available())}


def _set_threads(threads):
    import torch

    if threads is not None:
        if threads < 1:
            raise CLIError(EXIT_USAGE, f"--threads {threads}: expected an integer >= 1")
        torch.set_num_threads(threads)


def _make_trainer(build, checkpoint=None):
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


# ----------------------------------------------------------------------------------------------------------
# checkpoints

def _load_checkpoint(path):
    """(checkpoint dict, trainer state, file path); a run directory means its last.pt."""
    from dhvc_ext import checkpoint

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


def _trainer_from_state(state, path, device=None, threads=None):
    from dhvc_ext.train import TrainConfig, Trainer

    # A configuration that is not this TrainConfig's is a damaged or foreign file (EXIT_FORMAT), told apart
    # here from weights that do not fit a valid configuration (EXIT_MISMATCH, in _make_trainer).
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
    return _make_trainer(lambda: Trainer.from_state_dict(state, device=device), checkpoint=path)


def _data_info(dataset, source, scaling, data_dir, subset, seed):
    """What run.json and the checkpoints record about the data (enough to load them again)."""
    if source not in NAMED_DATA:
        source = str(Path(source).resolve())
    return dict(source=source, name=dataset.name, scaling=scaling,
                data_dir=None if data_dir is None else str(Path(data_dir).resolve()), subset=subset,
                subset_seed=seed, n_samples=len(dataset), n_features=dataset.n_features,
                image_shape=None if dataset.image_shape is None else list(dataset.image_shape),
                has_labels=dataset.y is not None)


def _scaling_tensors(dataset):
    """The dataset's affine scaling as tensors (a checkpoint holds only what weights_only loading accepts)."""
    import numpy as np
    import torch

    return dict(offset=torch.from_numpy(np.array(dataset.offset, dtype=np.float32)),
                scale=torch.from_numpy(np.array(dataset.scale, dtype=np.float32)),
                unit_interval=bool(dataset.unit_interval))


# ----------------------------------------------------------------------------------------------------------
# dhvc train

@dataclasses.dataclass
class _Run:
    out: Path
    dataset: object
    trainer: object
    data_info: dict
    options: dict                 # metrics_every, plots: fixed for the run
    best_epoch: int = None
    best_loss: float = math.inf
    elapsed_before: float = 0.0   # wall seconds of earlier sessions
    sessions: int = 1
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def elapsed(self):
        return self.elapsed_before + time.perf_counter() - self.started

    def checkpoint(self):
        from dhvc_ext import checkpoint

        return checkpoint.make(self.trainer, data={**self.data_info, **_scaling_tensors(self.dataset)},
                               run=dict(best_epoch=self.best_epoch, best_loss=self.best_loss,
                                        elapsed_s=self.elapsed(), sessions=self.sessions))


def _prepare_out_dir(out, overwrite):
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CLIError(EXIT_NOT_WRITABLE, f"--out {out}: exists and is not a directory")
    if out.is_dir() and any((out / name).exists() for name in (RUN_JSON, LAST)):
        if not overwrite:
            raise CLIError(EXIT_EXISTS, f"--out {out} already holds a run: continue it with `dhvc train --resume "
                           f"{out}`, or pass --overwrite to start over (its files are then replaced)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".dhvc-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CLIError(EXIT_NOT_WRITABLE, f"--out {out}: not writable ({err.strerror or err})") from None
    if overwrite:
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    _remove_temporaries(out)
    return out


def _remove_temporaries(out):
    """What writes cut short by SIGKILL left in a run directory (``checkpoint.remove_temporaries``)."""
    from dhvc_ext import checkpoint

    try:
        checkpoint.remove_temporaries(out, RUN_FILES)
    except OSError as err:
        raise CLIError(EXIT_NOT_WRITABLE, f"{out}: cannot remove the temporary files of an interrupted write "
                       f"({err.strerror or err})") from None


def _new_run(args, guard):
    import torch

    from dhvc_ext import checkpoint
    from dhvc_ext.train import TrainConfig, Trainer

    missing = [flag for flag, value in (("--data", args.data), ("--clusters", args.clusters), ("--out", args.out))
               if value is None]
    if missing:
        raise CLIError(EXIT_USAGE, f"a new run needs {', '.join(missing)} (or --resume DIR to continue a run)")
    fields = {}
    for field, flag, *_ in _train_fields():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            fields[field] = tuple(value) if isinstance(value, list) else value
    _set_threads(args.threads)
    fields.setdefault("num_threads", torch.get_num_threads())  # recorded: a resumed run uses the same count
    try:
        config = TrainConfig(**fields)
    except ValueError as err:
        raise CLIError(EXIT_USAGE, str(err)) from None
    scaling = args.scaling or "minmax"
    for name in ("metrics_every", "profile_steps"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "metrics_every" else 1):
            raise CLIError(EXIT_USAGE, f"--{name.replace('_', '-')} {value}: expected an integer >= "
                           f"{0 if name == 'metrics_every' else 1}")
    dataset = _load_data(args.data, scaling, args.data_dir, args.subset, config.seed)
    if config.n_clusters > len(dataset):
        raise CLIError(EXIT_TOO_FEW, f"--clusters {config.n_clusters} is more than the {len(dataset)} samples of "
                       f"{dataset.name}; expected K <= n")
    if config.likelihood == "bernoulli" and not dataset.unit_interval:
        raise CLIError(EXIT_USAGE, f"--likelihood bernoulli models features in [0, 1], but --scaling {scaling} "
                       f"gives {dataset.name} features outside [0, 1]; use --scaling minmax, or --likelihood gaussian")
    _refuse_overwriting_inputs({f"--out {args.out}": [Path(args.out) / name for name in RUN_FILES]},
                               _read_files(args, args.data))
    trainer = _make_trainer(lambda: Trainer(config, dataset.n_features, image_shape=dataset.image_shape,
                                            unit_interval=dataset.unit_interval))
    main = _is_main()
    out = _prepare_out_dir(args.out, args.overwrite) if main else Path(args.out)
    every = args.metrics_every
    if every is None:
        every = 1 if len(dataset) <= METRICS_EVERY_EPOCH_UP_TO else 5
    run = _Run(out, dataset, trainer, _data_info(dataset, args.data, scaling, args.data_dir, args.subset,
                                                 config.seed),
               options=dict(metrics_every=every, plots=args.plots is not False))
    if not main:
        return run
    with guard.critical():  # both or neither: a run.json without last.pt could be neither resumed nor restarted
        _write(out / RUN_JSON, checkpoint.write_json, dict(
            format="dhvc_ext.run", format_version=1, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            command=["dhvc", *args.argv],
            data=run.data_info, config=dataclasses.asdict(config), options=run.options))
        _write(out / LAST, checkpoint.save, run.checkpoint())  # epoch 0: an early interruption is resumable too
    return run


def _comparable(config):
    """A configuration without the runtime keys that a resumed run may change."""
    from dhvc_ext.checkpoint import json_safe

    return {k: v for k, v in json_safe(dict(config)).items() if k not in ("device", "num_threads")}


def _resume_run(args, actions):
    from dhvc_ext import checkpoint

    given = sorted(k for k in actions if getattr(args, k) not in (None, False) and k not in _RESUME_OVERRIDES)
    if given:
        raise CLIError(EXIT_USAGE, f"--resume continues the saved run with its own data and configuration; "
                       f"remove {', '.join('--' + k.replace('_', '-') for k in given)}")
    out = Path(args.resume)
    if not out.is_dir():
        raise CLIError(EXIT_NOT_FOUND, f"--resume {out}: no such directory")
    if not (out / RUN_JSON).exists():
        raise CLIError(EXIT_NOT_FOUND, f"--resume {out}: no {RUN_JSON} there; not a dhvc run directory")
    try:
        saved = json.loads((out / RUN_JSON).read_text())
        data_info, saved_config, options = saved["data"], saved["config"], saved["options"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CLIError(EXIT_FORMAT, f"--resume {out}: {RUN_JSON} is unreadable ({err!r})") from None
    if not (out / LAST).exists() and not _read_log(out):
        raise CLIError(EXIT_NOT_FOUND, f"--resume {out}: no {LAST} there: the run was stopped before its first "
                       f"checkpoint; start it again with `dhvc train --overwrite` and the options of {RUN_JSON}")
    ckpt, state, path = _load_checkpoint(out / LAST)
    if _comparable(state["config"]) != _comparable(saved_config):
        diff = sorted(k for k in set(_comparable(state["config"])) | set(_comparable(saved_config))
                      if _comparable(state["config"]).get(k) != _comparable(saved_config).get(k))
        raise CLIError(EXIT_MISMATCH, f"{path} is from another run than {out / RUN_JSON} (they differ in "
                       f"{', '.join(diff)})")
    _set_threads(args.threads)
    dataset = _load_data(data_info["source"], data_info["scaling"], data_info.get("data_dir"),
                         data_info.get("subset"), data_info.get("subset_seed", 0))
    if (len(dataset), dataset.n_features) != (data_info["n_samples"], data_info["n_features"]):
        raise CLIError(EXIT_MISMATCH, f"the data changed since the run started: {data_info['source']} now gives "
                       f"{len(dataset)} x {dataset.n_features}, the run trained on {data_info['n_samples']} x "
                       f"{data_info['n_features']}")
    if state["n_features"] != dataset.n_features:
        raise CLIError(EXIT_MISMATCH, f"{path} holds a model for {state['n_features']} features; the run's data "
                       f"have {dataset.n_features}")
    trainer = _trainer_from_state(state, path, device=args.device, threads=args.threads)
    options = dict(options)
    if args.plots is not None:
        options["plots"] = args.plots
    if args.metrics_every is not None:
        options["metrics_every"] = args.metrics_every
    info = ckpt.get("run", {}) if isinstance(ckpt, dict) else {}
    run = _Run(out, dataset, trainer, data_info, options=options, best_epoch=info.get("best_epoch"),
               best_loss=info.get("best_loss", math.inf) if info.get("best_loss") is not None else math.inf,
               elapsed_before=float(info.get("elapsed_s", 0.0)), sessions=int(info.get("sessions", 1)) + 1)
    if not _is_main():
        return run
    _remove_temporaries(out)
    _check_best(run)
    # The log may hold an epoch after the checkpoint's (killed between the two writes): drop it.
    entries = [e for e in _read_log(out) if e.get("epoch", 0) <= trainer.epoch]
    _write(out / LOG, checkpoint.atomic_write,
           lambda f: f.write("".join(json.dumps(e, allow_nan=False) + "\n" for e in entries).encode()))
    return run


def _check_best(run):
    """best.pt must hold the best epoch that last.pt records. A kill or a full disk between the writes of
    last.pt and best.pt, or a hand, may have left it missing, damaged or older: when the best epoch is
    last.pt's own (as it is after such a failed write), best.pt is copied from last.pt again; otherwise the
    best model is lost, and the run stops with the code of the problem."""
    from dhvc_ext import checkpoint

    if run.best_epoch is None:  # no joint epoch yet: no best.pt to expect
        return
    best = run.out / BEST
    try:
        saved = checkpoint.trainer_state(_load_checkpoint(best)[0])["epoch"]
        if saved == run.best_epoch:
            return
        code, problem = EXIT_MISMATCH, f"{best} holds epoch {saved}, not the best epoch {run.best_epoch}"
    except CLIError as err:
        code, problem = err.code, err.message
    if run.best_epoch == run.trainer.epoch:
        _write(best, lambda dst: checkpoint.copy(run.out / LAST, dst))
        print(f"dhvc train: {problem}; rewrote {BEST} from {LAST}, which holds that epoch", file=sys.stderr)
        return
    raise CLIError(code, f"--resume {run.out}: {problem}; {LAST} holds epoch {run.trainer.epoch}, so the best "
                   f"model of epoch {run.best_epoch} cannot be rebuilt; restore {BEST} from a copy, or start the run "
                   "again with --overwrite")


def _read_log(out):
    entries = []
    with contextlib.suppress(FileNotFoundError):
        for line in (out / LOG).read_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    return entries


def _epoch_callback(run, guard, bars, quiet):
    from dhvc_ext import checkpoint

    trainer, dataset = run.trainer, run.dataset
    cfg = trainer.config
    every = run.options["metrics_every"]

    def callback(_trainer, record):
        if not _is_main():  # under torchrun only rank 0 evaluates, logs and checkpoints
            return False
        entry = dict(record)
        joint_epoch = trainer.epoch - cfg.pretrain_epochs
        if (dataset.y is not None and every and record["phase"] == "joint"
                and (joint_epoch % every == 0 or trainer.epoch == cfg.total_epochs)):
            with _rng_preserved(trainer.device):
                entry.update(_scores(dataset.y, trainer.predict(dataset)))
        is_best = record["phase"] == "joint" and record["loss"] < run.best_loss
        if is_best:
            run.best_epoch, run.best_loss = trainer.epoch, float(record["loss"])
        entry["best"] = is_best
        line = json.dumps(checkpoint.json_safe(entry), allow_nan=False) + "\n"
        with guard.critical():
            try:
                with open(run.out / LOG, "a") as f:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as err:
                raise CLIError(EXIT_NOT_WRITABLE, f"could not append to {run.out / LOG}: {err.strerror or err}") \
                    from None
            _write(run.out / LAST, checkpoint.save, run.checkpoint())
            if is_best:
                _write(run.out / BEST, lambda dst: checkpoint.copy(run.out / LAST, dst))
            # reported inside the block, so that a signal held during the writes fires after the report
            if bars is not None:
                bars.epoch_done(entry)
            elif not quiet:
                scores = "  ".join(f"{s} {entry[s]:.3f}" for s in SCORES if entry.get(s) is not None)
                print(f"epoch {trainer.epoch:>{len(str(cfg.total_epochs))}}/{cfg.total_epochs} "
                      f"{record['phase']:<8} {_format_terms(entry, _loss_terms())}  "
                      f"{record['samples_per_s']:.0f} samples/s" + (f"  {scores}" if scores else "")
                      + ("  (best)" if is_best else ""), file=sys.stderr, flush=True)
        return False

    return callback


def _loss_terms():
    from dhvc_ext.models import LOSS_TERMS

    return LOSS_TERMS


def _profile(trainer, dataset, out, steps):
    """Profile ``steps`` training steps of each phase (``Trainer.step``, the training's own, on a replica of
    the trainer per phase: the run itself is untouched, torch's random state restored); write the table and
    a Chrome trace; return the share of time in dhvc_ext ops."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = trainer.device.type == "cuda"
    replicas = [(phase, trainer.replica(phase, dataset)) for phase in ("pretrain", "joint")]
    with _rng_preserved(trainer.device):
        batches = {}
        for phase, replica in replicas:
            batches[phase] = []
            while len(batches[phase]) < steps + 1:
                batches[phase].extend(replica.training_batches(dataset, phase))
            del batches[phase][steps + 1:]

        def step(replica, phase, batch):
            x, targets = batch
            with record_function(f"dhvc {phase} step"):
                replica.step(x, phase, targets)

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        for phase, replica in replicas:  # warm-up: first-call allocations and lazy initialisation stay out
            step(replica, phase, batches[phase][0])
        if cuda:
            torch.cuda.synchronize(trainer.device)
        with profile(activities=activities) as prof:
            for phase, replica in replicas:
                for batch in batches[phase][1:]:
                    step(replica, phase, batch)
            if cuda:
                torch.cuda.synchronize(trainer.device)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, attr) for e in events) or 1.0
    ours = sorted(((e.key, getattr(e, attr) / total) for e in events if e.key.startswith("dhvc_ext::")),
                  key=lambda kv: -kv[1])
    glue = sum(getattr(e, attr) for e in events if e.key.startswith("GeneratedBackwardFor_dhvc_ext")) / total
    share = sum(v for _, v in ours)
    what = "GPU kernel time" if cuda else "CPU self time"
    header = [f"torch.profiler: {steps} pretraining + {steps} joint training steps (forward, backward, "
              f"clipping, Adam), batch {batches['joint'][0][0].shape[0]}, device {trainer.device}, "
              f"torch threads {torch.get_num_threads()}",
              f"share of {what} in dhvc_ext ops: {100 * share:.1f}%"
              + ("" if cuda else f" (and {100 * glue:.1f}% in their autograd nodes, GeneratedBackwardFor_dhvc_ext_*)")]
    header += [f"  {key}: {100 * value:.1f}%" for key, value in ours]
    table = events.table(sort_by=attr, row_limit=30)
    _write(out / PROFILE_TXT, _write_text, "\n".join(header) + "\n\n" + table + "\n")
    try:
        prof.export_chrome_trace(str(out / PROFILE_TRACE))
    except OSError as err:
        raise CLIError(EXIT_NOT_WRITABLE, f"could not write {out / PROFILE_TRACE}: {err}") from None
    return share, ours, header


def _write_text(path, text):
    from dhvc_ext.checkpoint import atomic_write

    return atomic_write(path, lambda f: f.write(text.encode()))


def _finish(run, quiet):
    """After the last epoch: final checkpoints, labels.npy, metrics.json, plots. Returns the lines to print."""
    import numpy as np

    from dhvc_ext import checkpoint

    trainer, dataset, out = run.trainer, run.dataset, run.out
    cfg = trainer.config
    # fit() fits the mixture after the last epoch when there is no joint phase: save that state; with no joint
    # epoch to choose from, the final model is also the best.
    if run.best_epoch is None:
        run.best_epoch, run.best_loss = trainer.epoch, math.nan
    _write(out / LAST, checkpoint.save, run.checkpoint())
    if run.best_epoch == trainer.epoch:
        _write(out / BEST, lambda dst: checkpoint.copy(out / LAST, dst))
    rules = ("head", "mixture") if trainer.model.head is not None else ("mixture",)
    rule = cfg.predict_with if cfg.predict_with in rules else "mixture"
    by_rule = {}
    for which in rules:
        predicted = trainer.predict(dataset, which)
        if which == rule:
            labels = predicted
        by_rule[which] = dict(_scores(dataset.y, predicted) if dataset.y is not None else {},
                              cluster_sizes=np.bincount(predicted, minlength=cfg.n_clusters).tolist())
    _write(out / LABELS, checkpoint.save_npy, labels.astype(np.int64))
    best = dict(epoch=run.best_epoch, loss=run.best_loss)
    if dataset.y is not None and run.best_epoch != trainer.epoch:
        _, best_state, best_path = _load_checkpoint(out / BEST)
        best_trainer = _trainer_from_state(best_state, best_path, device=str(trainer.device))
        best.update(_scores(dataset.y, best_trainer.predict(dataset)))
    elif dataset.y is not None:
        best.update({s: by_rule[rule][s] for s in SCORES})
    history = trainer.history
    metrics = dict(
        **({s: by_rule[rule][s] for s in SCORES} if dataset.y is not None else {}),
        predict_with=rule, n_samples=len(dataset), n_features=dataset.n_features, n_clusters=cfg.n_clusters,
        epochs=trainer.epoch, final_loss=history[-1]["loss"] if history else None,
        seconds=run.elapsed(), train_seconds=sum(r["seconds"] for r in history), sessions=run.sessions,
        by_rule=by_rule, best=best, data={k: v for k, v in run.data_info.items()}, config=dataclasses.asdict(cfg),
        versions=_versions(), device=str(trainer.device), cuda_kernels_used=_cuda_kernels(trainer.device)["used"],
        cuda_kernels_built=_cuda_kernels(trainer.device)["built"], labels_file=LABELS)
    _write(out / METRICS, checkpoint.write_json, metrics)
    written = [METRICS, LABELS, LOG, LAST, BEST]
    plots = []
    if run.options.get("plots", True):
        plots = _plots(trainer, dataset, labels, out, history, _read_log(out))
    lines = [f"dhvc train: {_describe(dataset)}, K={cfg.n_clusters}, {trainer.epoch} epochs on {trainer.device} "
             f"in {run.elapsed():.1f} s" + (f" ({run.sessions} sessions)" if run.sessions > 1 else "")]
    if dataset.y is not None:
        other = "".join(f"; rule {w}: acc {r['acc']:.3f}" for w, r in by_rule.items() if w != rule)
        lines.append("  " + "  ".join(f"{s} {by_rule[rule][s]:.3f}" for s in SCORES) + f"   (rule {rule}{other})")
    sizes = by_rule[rule]["cluster_sizes"]
    lines.append(f"  cluster sizes {min(sizes)}..{max(sizes)} ({sum(s == 0 for s in sizes)} empty); best epoch by "
                 f"training loss: {run.best_epoch}")
    lines.append(f"  wrote {out}/: {' '.join(written)}")
    if plots:
        lines.append(f"  plots: {' '.join(str(out / p) for p in plots)}")
    return lines


def _plots(trainer, dataset, labels, out, history, log):
    """The PNGs of a run (file names, in order)."""
    from dhvc_ext import plots

    written = [plots.losses(history, out / PLOTS["losses"], terms=_loss_terms()).name]
    scored = [e for e in log if e.get("acc") is not None]
    if dataset.y is not None and scored:
        written.append(plots.metrics(scored, out / PLOTS["metrics"]).name)
    mu = trainer.encode(dataset).float().cpu().numpy()
    written.append(plots.latent_pca(mu, labels, out / PLOTS["latent"], labels=dataset.y,
                                    n_clusters=trainer.model.n_clusters).name)
    if dataset.y is not None:
        written.append(plots.confusion(dataset.y, labels, out / PLOTS["confusion"]).name)
    written.append(plots.cluster_sizes(labels, trainer.model.n_clusters, out / PLOTS["sizes"]).name)
    return written


def _is_main():
    from dhvc_ext import distributed

    return distributed.is_main()


def _join_process_group(args):
    """Under torchrun (WORLD_SIZE > 1), join the process group: NCCL when the run trains on GPUs, else gloo."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    import torch

    from dhvc_ext import distributed, ops

    device = args.device or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and ops.cuda_available() else "cpu"
    try:
        distributed.init_from_env(device=torch.device(device))
    except (RuntimeError, ValueError) as err:
        raise CLIError(EXIT_USAGE, f"could not join the torchrun process group: {err}") from None


def cmd_train(args, actions):
    _join_process_group(args)
    with _SignalGuard() as guard:
        run = None
        try:
            run = _resume_run(args, actions) if args.resume else _new_run(args, guard)
            code = _train(run, args, guard)
        except _Interrupted as sig:
            return _interrupted(sig, run, args)
    from dhvc_ext import distributed

    several = distributed.world_size() > 1
    if run is not None:
        run.trainer.release_process_group()
    distributed.finish()  # the other ranks wait for rank 0's results before the group goes
    if several:
        # Every result is written and the group is gone: leave without the interpreter's teardown. Under load
        # a rank sometimes aborted there ("terminate called without an active exception", a C++ thread
        # destroyed while joinable, seen twice in the 2-process resume test), turning a finished run into
        # exit code -6; os._exit skips those destructors.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _train(run, args, guard):
    import warnings

    trainer, cfg = run.trainer, run.trainer.config
    main = _is_main()
    quiet = bool(args.quiet) or not main  # under torchrun rank 0 alone reports
    progress = args.progress if args.progress is not None else (sys.stderr.isatty() and not quiet)
    progress = progress and main and trainer.world == 1  # the bars count one process's samples
    if not quiet:
        state = (f"resuming after epoch {trainer.epoch} of {cfg.total_epochs}" if args.resume
                 else f"{cfg.pretrain_epochs} pretraining + {cfg.epochs} joint epochs")
        print(f"dhvc train: {_describe(run.dataset)}, K={cfg.n_clusters}, {state}, on {trainer.device} "
              f"({_threads_text()}); writing to {run.out}", file=sys.stderr, flush=True)
    if getattr(args, "profile", False) and main:
        share, ours, header = _profile(trainer, run.dataset, run.out, args.profile_steps or 10)
        print("\n".join(header) + f"\n  table: {run.out / PROFILE_TXT}, Chrome trace: {run.out / PROFILE_TRACE}",
              file=sys.stderr, flush=True)
    if trainer.epoch >= cfg.total_epochs and args.resume and not quiet:
        print("dhvc train: the run had finished training; writing its results again", file=sys.stderr)
    bars = _Bars(trainer, len(run.dataset)) if progress else None
    callback = _epoch_callback(run, guard, bars, quiet)
    try:
        with bars if bars is not None else contextlib.nullcontext():
            trainer.fit(run.dataset, callback=callback,
                        batch_callback=None if bars is None else bars.batch_done)
    except FloatingPointError as err:
        raise CLIError(EXIT_DIVERGED, f"{err}. {run.out / LAST} keeps the run after epoch "
                       f"{_saved_epoch(run)}; try a smaller --lr") from None
    if not main:
        return EXIT_OK
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # matplotlib's layout notes on tiny figures
        lines = _finish(run, quiet)
    print("\n".join(lines), flush=True)
    return EXIT_OK


def _threads_text():
    import torch

    n = torch.get_num_threads()
    return f"{n} thread{'s' if n != 1 else ''}"


def _saved_epoch(run):
    entries = _read_log(run.out)
    return entries[-1]["epoch"] if entries else 0


def _interrupted(sig, run, args):
    name = signal.Signals(sig.signum).name
    code = 128 + sig.signum
    if not _is_main():
        return code
    if run is None:
        out = Path(args.resume or args.out or ".")
        resumable = (out / LAST).exists() and (out / RUN_JSON).exists()
        print(f"dhvc train: interrupted by {name} before training started"
              + (f"; continue with: dhvc train --resume {out}" if resumable else "; nothing was written"),
              file=sys.stderr)
        return code
    trainer, cfg, out = run.trainer, run.trainer.config, run.out
    saved = _saved_epoch(run)
    if trainer.epoch >= cfg.total_epochs and saved >= cfg.total_epochs:
        print(f"dhvc train: interrupted by {name} after training finished, before all results were written; "
              f"{out / LAST} holds the trained model; write the results with: dhvc train --resume {out}",
              file=sys.stderr)
    else:
        print(f"dhvc train: interrupted by {name} during epoch {saved + 1} of {cfg.total_epochs}; {out / LAST} "
              f"holds the run after epoch {saved} (the unfinished epoch is dropped, so that resuming repeats it "
              f"exactly); continue with: dhvc train --resume {out}", file=sys.stderr)
    return code


# ----------------------------------------------------------------------------------------------------------
# dhvc evaluate / predict

def _checkpoint_data(args, ckpt, state):
    """The data set to evaluate or predict on, scaled as ``--scaling`` says, with the checkpoint's shape; its
    source; and whether its rows are the training rows, in their order (the run's data and subset)."""
    import numpy as np

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
    dataset = _load_data(source, "none" if load_scaling is None else load_scaling, data_dir, subset, seed)
    if dataset.n_features != state["n_features"]:
        raise CLIError(EXIT_MISMATCH, f"the checkpoint's model takes {state['n_features']} features per sample "
                       f"but {source} has {dataset.n_features}: it comes from another model shape")
    if train_scaling:
        offset, scale = (np.asarray(info[k].numpy() if hasattr(info[k], "numpy") else info[k], dtype=np.float32)
                         for k in ("offset", "scale"))
        dataset = dataclasses.replace(dataset, offset=offset, scale=scale, unit_interval=bool(info["unit_interval"]))
    return dataset, source, training_rows


def _evaluation_trainer(args):
    import torch

    ckpt, state, path = _load_checkpoint(args.checkpoint)
    _set_threads(args.threads)
    dataset, source, training_rows = _checkpoint_data(args, ckpt, state)
    trainer = _trainer_from_state(state, path, device=args.device, threads=args.threads or torch.get_num_threads())
    return trainer, dataset, source, path, training_rows


def _objective(trainer, dataset, training_rows):
    """The trained objective on ``dataset`` (``Trainer.evaluate_loss``): on the training rows with the run's
    own neighbours, elsewhere with neighbours found among the rows given."""
    index = trainer.neighbor_index
    own = training_rows and index is not None and index.shape[0] == len(dataset)
    return trainer.evaluate_loss(dataset, neighbor_index=index if own else None)


def cmd_evaluate(args, actions):
    import numpy as np

    from dhvc_ext import checkpoint

    if args.checkpoint is None:
        raise CLIError(EXIT_USAGE, "--checkpoint FILE is required")
    trainer, dataset, source, path, training_rows = _evaluation_trainer(args)
    if args.out is not None:
        _refuse_overwriting_inputs({f"--out {args.out}": [Path(args.out) / name for name in
                                                          ("evaluation.json", *PLOTS.values())]},
                                   _read_files(args, source, path))
    which = args.which or trainer.config.predict_with
    if trainer.model.head is None:
        which = "mixture"
    labels = trainer.predict(dataset, which)
    sizes = np.bincount(labels, minlength=trainer.model.n_clusters).tolist()
    result = dict(checkpoint=str(path), data=_describe(dataset), n_samples=len(dataset),
                  n_clusters=trainer.model.n_clusters, epoch=trainer.epoch, which=which,
                  **(_scores(dataset.y, labels) if dataset.y is not None else {}),
                  loss=_objective(trainer, dataset, training_rows), cluster_sizes=sizes, device=str(trainer.device),
                  cuda_kernels_used=_cuda_kernels(trainer.device)["used"])
    if args.out is not None:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CLIError(EXIT_NOT_WRITABLE, f"--out {out}: not writable ({err.strerror or err})") from None
        _write(out / "evaluation.json", checkpoint.write_json, {**result, "versions": _versions()})
        from dhvc_ext import plots

        mu = trainer.encode(dataset).float().cpu().numpy()
        plots.latent_pca(mu, labels, out / PLOTS["latent"], labels=dataset.y, n_clusters=trainer.model.n_clusters)
        if dataset.y is not None:
            plots.confusion(dataset.y, labels, out / PLOTS["confusion"])
        plots.cluster_sizes(labels, trainer.model.n_clusters, out / PLOTS["sizes"])
    if args.json:
        print(json.dumps(checkpoint.json_safe(result)))
    else:
        print(f"dhvc evaluate: {path} (epoch {trainer.epoch}) on {result['data']}, rule {which}")
        if dataset.y is not None:
            print("  " + "  ".join(f"{s} {result[s]:.4f}" for s in SCORES))
        else:
            print("  no labels in these data: no scores (the loss below needs none)")
        print("  objective on these data: " + _format_terms(result["loss"], tuple(result["loss"])))
        print(f"  cluster sizes: {' '.join(map(str, sizes))}")
        if args.out is not None:
            print(f"  wrote {Path(args.out) / 'evaluation.json'} and plots in {args.out}")
    return EXIT_OK


def cmd_predict(args, actions):
    import numpy as np

    from dhvc_ext import checkpoint

    for flag, value in (("--checkpoint FILE", args.checkpoint), ("--output FILE", args.output)):
        if value is None:
            raise CLIError(EXIT_USAGE, f"{flag} is required")
    for name in (args.output, args.proba):
        if name is not None:
            parent = Path(name).resolve().parent
            if not parent.is_dir():
                raise CLIError(EXIT_NOT_WRITABLE, f"cannot write {name}: {parent} is not a directory")
    trainer, dataset, source, path, _ = _evaluation_trainer(args)
    _refuse_overwriting_inputs({f"--{flag} {name}": [Path(name)] for flag, name in
                                (("output", args.output), ("proba", args.proba)) if name is not None},
                               _read_files(args, source, path))
    which = args.which or trainer.config.predict_with
    proba = trainer.predict_proba(dataset, which if trainer.model.head is not None else "mixture")
    labels = proba.argmax(axis=1).astype(np.int64)
    _write(Path(args.output), checkpoint.save_npy, labels)
    if args.proba is not None:
        _write(Path(args.proba), checkpoint.save_npy, proba.astype(np.float32))
    sizes = np.bincount(labels, minlength=trainer.model.n_clusters)
    print(f"dhvc predict: {len(labels)} labels of {_describe(dataset)} -> {args.output} (rule {which}; cluster "
          f"sizes {sizes.min()}..{sizes.max()}, {int((sizes == 0).sum())} empty)"
          + (f"; probabilities -> {args.proba}" if args.proba else ""))
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------
# dhvc bench

BENCH_FILES = dict(bessel="test_bench_bessel.py", vmf="test_bench_vmf.py", vmfmm="test_bench_vmfmm.py")


def cmd_bench(args, actions):
    import importlib.util
    import subprocess
    import tempfile

    package = Path(__file__).resolve().parent
    bench_dir = Path(args.benchmarks_dir) if args.benchmarks_dir else package.parent / "benchmarks"
    files = [bench_dir / BENCH_FILES[name] for name in (args.only or BENCH_FILES)]
    missing = [p.name for p in [bench_dir / "summarize.py", *files] if not p.exists()]
    if missing:
        if args.benchmarks_dir:
            raise CLIError(EXIT_NOT_FOUND, f"--benchmarks-dir {bench_dir} lacks {', '.join(missing)}: expected the "
                           "benchmarks/ directory of a dhvc-ext source checkout")
        raise CLIError(EXIT_NOT_FOUND, f"dhvc bench runs the benchmark files of a source checkout, and this "
                       f"installation of dhvc_ext ({package}) has no benchmarks/ beside it (missing: "
                       f"{', '.join(missing)}): clone the repository and run `dhvc bench` (or `make bench`) there, "
                       "or pass --benchmarks-dir DIR")
    lacking = [m for m in ("pytest", "pytest_benchmark") if importlib.util.find_spec(m) is None]
    if lacking:
        raise CLIError(EXIT_NOT_FOUND, f"dhvc bench needs {' and '.join(lacking)}: pip install pytest "
                       "pytest-benchmark")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(args.json) if args.json else Path(tmp) / "bench.json"
        command = [sys.executable, "-m", "pytest", *map(str, files), "-q", "-p", "no:cacheprovider",
                   "--benchmark-quiet", f"--benchmark-json={report}", f"--rootdir={bench_dir.parent}"]
        if args.k:
            command += ["-k", args.k]
        print(f"dhvc bench: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        rc = subprocess.call(command, cwd=bench_dir.parent)
        if rc == 5:
            raise CLIError(EXIT_USAGE, f"no benchmark selected{f' by -k {args.k!r}' if args.k else ''}")
        if rc != 0:
            raise CLIError(EXIT_INTERNAL, f"the benchmarks failed (pytest exit status {rc}); see the output above")
        summary = [sys.executable, str(bench_dir / "summarize.py"), str(report)]
        if args.markdown:
            summary += ["--markdown", args.markdown]
        rc = subprocess.call(summary)
    return EXIT_OK if rc == 0 else EXIT_INTERNAL


# ----------------------------------------------------------------------------------------------------------

COMMANDS = dict(train=cmd_train, evaluate=cmd_evaluate, predict=cmd_predict, bench=cmd_bench)


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"dhvc: warning: {category.__name__}: {' '.join(str(message).split())}\n"


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    import warnings

    try:
        parser, actions = _build_parser()
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        args.argv = argv
    except SystemExit as exit_:  # --help, --version, argparse's usage errors
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        _check_paths(args, actions[args.command])
        _apply_config(args, actions[args.command], actions)
        _check_arguments(args, actions[args.command])
        return COMMANDS[args.command](args, actions[args.command])
    except CLIError as err:
        print(f"dhvc {args.command}: error: {err.message}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"dhvc {args.command}: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":
    sys.exit(main())
