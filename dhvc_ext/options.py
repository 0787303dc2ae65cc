"""The ``dhvc`` command's options beyond argparse: the flags of the ``TrainConfig`` fields, ``--config`` files
(TOML, YAML, JSON; one table per command or shared keys), and the checks made before anything is read or
written.
"""
import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import torch

from dhvc_ext.exit_codes import EXIT_FORMAT, EXIT_NOT_FOUND, EXIT_USAGE, CLIError


# TrainConfig fields as flags: field -> (flag, argparse keywords, help). The defaults shown in --help are read
# from TrainConfig itself.
TRAIN_FIELDS = {
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
    "cluster_init": ("--cluster-init", dict(choices=("mixture", "manifold", "best")),
                     "start the clusters from the vMF mixture fitted to the codes, from a consensus of UMAP + "
                     "GMM runs on the input rows (needs umap-learn), or train from both and keep the one whose "
                     "objective is lower (best: twice the joint epochs)"),
    "manifold_runs": ("--manifold-runs", dict(type=int, metavar="N"),
                      "UMAP + GMM runs in the consensus of --cluster-init manifold"),
    "predict_with": ("--predict-with", dict(choices=("head", "mixture")),
                     "prediction rule: argmax q(c|x) (head) or argmax p(c|mu_x) (mixture)"),
    "seed": ("--seed", dict(type=int, metavar="N"),
             "random seed (network, sampler, batch order, mixture start and --subset)"),
    "device": ("--device", dict(metavar="DEV"), "auto, cpu, cuda or cuda:N (auto: CUDA when usable)"),
    "bf16": ("--bf16", dict(action=argparse.BooleanOptionalAction), "bfloat16 autocast of the networks (CPU and CUDA)"),
    "num_threads": ("--threads", dict(type=int, metavar="N"),
                    "torch CPU threads (default: torch's; recorded, so a resumed run uses the same count and "
                    "repeats the run bit for bit)"),
}


def train_fields():
    """[(TrainConfig field, flag, argparse keywords, help, default)] for every field of TrainConfig: those of
    ``TRAIN_FIELDS`` as written there, any other (a field added later) with a flag and type derived from its
    name and default, so that the command line never lags behind the configuration."""
    from dhvc_ext.train import TrainConfig

    fields = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in TRAIN_FIELDS:
            flag, kwargs, help_text = TRAIN_FIELDS[f.name]
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
RESUME_OVERRIDES = ("resume", "device", "threads", "progress", "quiet", "plots", "metrics_every", "tensorboard")
#: The largest seed + 1: the mixture's initialisation seeds NumPy's RandomState, which takes 32 bits.
SEED_LIMIT = 2**32


def check_paths(args, actions):
    """A file or directory option given as the empty string (which would name the working directory)."""
    for dest, action in actions.items():
        if action.metavar in ("FILE", "DIR", "SOURCE") and getattr(args, dest, None) == "":
            raise CLIError(EXIT_USAGE, f"{action.option_strings[0]} '': expected a path")


def check_arguments(args, actions):
    """Checks of options, flags and --config alike, made before anything is read or written."""
    check_paths(args, actions)
    if getattr(args, "quiet", None) and getattr(args, "progress", None):
        raise CLIError(EXIT_USAGE, "--quiet and --progress contradict each other; pass one of them")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise CLIError(EXIT_USAGE, f"--seed {seed}: expected an integer 0 <= N < 2^32")
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def check_device(device):
    """--device: auto, cpu, cuda or cuda:N, usable on this machine (else EXIT_USAGE)."""
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


def read_config(path, command):
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


def convert_value(action, key, value, where):
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


def apply_config(args, actions, all_actions):
    """Fill the options not given on the command line from ``--config``. In a file with per-command tables,
    the keys outside the tables are shared: each command takes those it has."""
    if getattr(args, "config", None) is None:
        return
    where = f"--config {args.config}"
    aliases = {field: flag[2:].replace("-", "_") for field, flag, *_ in train_fields()}
    levels, sectioned = read_config(args.config, args.command)
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
            setattr(args, key, convert_value(actions[key], raw_key, value, where))
