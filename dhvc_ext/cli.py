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
import importlib.util
import json
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np

from dhvc_ext import checkpoint
from dhvc_ext.console import SCORES, describe, format_terms, one_line_warning
from dhvc_ext.exit_codes import (EXIT_CODES, EXIT_DIVERGED, EXIT_EXISTS, EXIT_FORMAT, EXIT_INTERNAL,
                                 EXIT_MISMATCH, EXIT_NONFINITE, EXIT_NOT_FOUND, EXIT_NOT_WRITABLE, EXIT_OK,
                                 EXIT_SHAPE, EXIT_SIGINT, EXIT_SIGTERM, EXIT_TOO_FEW, EXIT_UNSAFE, EXIT_USAGE,
                                 CLIError)
from dhvc_ext.options import apply_config, check_arguments, check_paths, train_fields
from dhvc_ext.run_files import (BEST, LABELS, LAST, LOG, METRICS, PLOTS, PROFILE_TRACE, PROFILE_TXT, RUN_JSON,
                                cuda_kernels, evaluation_trainer, label_scores, read_files,
                                refuse_overwriting_inputs, versions, write_or_fail)
from dhvc_ext.runs import METRICS_EVERY_EPOCH_UP_TO, train_command

# The exit codes and CLIError are re-exported: dhvc_ext.cli.EXIT_USAGE and the others.
__all__ = ["CLIError", "EXIT_CODES", "EXIT_OK", "EXIT_INTERNAL", "EXIT_USAGE", "EXIT_NOT_FOUND", "EXIT_FORMAT",
           "EXIT_SHAPE", "EXIT_NONFINITE", "EXIT_TOO_FEW", "EXIT_NOT_WRITABLE", "EXIT_MISMATCH", "EXIT_UNSAFE",
           "EXIT_DIVERGED", "EXIT_EXISTS", "EXIT_SIGINT", "EXIT_SIGTERM", "main"]


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
        "with its saved data and configuration (only --device, --threads, --progress, --quiet, --plots, "
        "--tensorboard and --metrics-every may be added)")
    add(train, g, "--overwrite", action="store_true", help="start a new run in an --out that already holds one "
        "(its files are replaced)")
    g = train.add_argument_group("model and schedule (defaults: dhvc_ext.train.TrainConfig)")
    for field, flag, kwargs, help_text, default in train_fields():
        add(train, g, flag, dest=flag[2:].replace("-", "_"), **kwargs,
            help=help_text if field == "n_clusters" else f"{help_text} (default: {_default_text(default)})")
    g = train.add_argument_group("reporting")
    add(train, g, "--metrics-every", type=int, metavar="N", help="score against the labels (when the data have "
        "them) every N joint epochs, for the metrics plot and the log; each costs a prediction pass over the "
        f"data. 0: never (default: 1 up to {METRICS_EVERY_EPOCH_UP_TO} samples, else 5)")
    add(train, g, "--plots", action=argparse.BooleanOptionalAction, help="write the PNG plots (default: yes)")
    add(train, g, "--tensorboard", action=argparse.BooleanOptionalAction, help="also write TensorBoard event files "
        "to DIR/tensorboard: each epoch's loss terms and scores, the posterior and mixture concentrations, and the "
        "latent means in the embedding projector (needs the tensorboard package; default: no)")
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


def _objective(trainer, dataset, training_rows):
    """The trained objective on ``dataset`` (``Trainer.evaluate_loss``): on the training rows with the run's
    own neighbours, elsewhere with neighbours found among the rows given."""
    index = trainer.neighbor_index
    own = training_rows and index is not None and index.shape[0] == len(dataset)
    return trainer.evaluate_loss(dataset, neighbor_index=index if own else None)


def cmd_evaluate(args, actions):
    if args.checkpoint is None:
        raise CLIError(EXIT_USAGE, "--checkpoint FILE is required")
    trainer, dataset, source, path, training_rows = evaluation_trainer(args)
    if args.out is not None:
        refuse_overwriting_inputs({f"--out {args.out}": [Path(args.out) / name for name in
                                                          ("evaluation.json", *PLOTS.values())]},
                                   read_files(args, source, path))
    which = args.which or trainer.config.predict_with
    if trainer.model.head is None:
        which = "mixture"
    labels = trainer.predict(dataset, which)
    sizes = np.bincount(labels, minlength=trainer.model.n_clusters).tolist()
    result = dict(checkpoint=str(path), data=describe(dataset), n_samples=len(dataset),
                  n_clusters=trainer.model.n_clusters, epoch=trainer.epoch, which=which,
                  **(label_scores(dataset.y, labels) if dataset.y is not None else {}),
                  loss=_objective(trainer, dataset, training_rows), cluster_sizes=sizes, device=str(trainer.device),
                  cuda_kernels_used=cuda_kernels(trainer.device)["used"])
    if args.out is not None:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CLIError(EXIT_NOT_WRITABLE, f"--out {out}: not writable ({err.strerror or err})") from None
        write_or_fail(out / "evaluation.json", checkpoint.write_json, {**result, "versions": versions()})
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
        print("  objective on these data: " + format_terms(result["loss"], tuple(result["loss"])))
        print(f"  cluster sizes: {' '.join(map(str, sizes))}")
        if args.out is not None:
            print(f"  wrote {Path(args.out) / 'evaluation.json'} and plots in {args.out}")
    return EXIT_OK


def cmd_predict(args, actions):
    for flag, value in (("--checkpoint FILE", args.checkpoint), ("--output FILE", args.output)):
        if value is None:
            raise CLIError(EXIT_USAGE, f"{flag} is required")
    for name in (args.output, args.proba):
        if name is not None:
            parent = Path(name).resolve().parent
            if not parent.is_dir():
                raise CLIError(EXIT_NOT_WRITABLE, f"cannot write {name}: {parent} is not a directory")
    trainer, dataset, source, path, _ = evaluation_trainer(args)
    refuse_overwriting_inputs({f"--{flag} {name}": [Path(name)] for flag, name in
                                (("output", args.output), ("proba", args.proba)) if name is not None},
                               read_files(args, source, path))
    which = args.which or trainer.config.predict_with
    proba = trainer.predict_proba(dataset, which if trainer.model.head is not None else "mixture")
    labels = proba.argmax(axis=1).astype(np.int64)
    write_or_fail(Path(args.output), checkpoint.save_npy, labels)
    if args.proba is not None:
        write_or_fail(Path(args.proba), checkpoint.save_npy, proba.astype(np.float32))
    sizes = np.bincount(labels, minlength=trainer.model.n_clusters)
    print(f"dhvc predict: {len(labels)} labels of {describe(dataset)} -> {args.output} (rule {which}; cluster "
          f"sizes {sizes.min()}..{sizes.max()}, {int((sizes == 0).sum())} empty)"
          + (f"; probabilities -> {args.proba}" if args.proba else ""))
    return EXIT_OK


BENCH_FILES = dict(bessel="test_bench_bessel.py", vmf="test_bench_vmf.py", vmfmm="test_bench_vmfmm.py")


def cmd_bench(args, actions):
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


COMMANDS = dict(train=train_command, evaluate=cmd_evaluate, predict=cmd_predict, bench=cmd_bench)


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        parser, actions = _build_parser()
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        args.argv = argv
    except SystemExit as exit_:  # --help, --version, argparse's usage errors
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    previous = warnings.formatwarning
    warnings.formatwarning = one_line_warning
    try:
        check_paths(args, actions[args.command])
        apply_config(args, actions[args.command], actions)
        check_arguments(args, actions[args.command])
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
