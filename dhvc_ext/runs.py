"""The life of a ``dhvc train`` run directory: a new run or a resumed one, the checkpoints and the log after
every epoch, signals (SIGINT, SIGTERM) held during writes, the results at the end (metrics, labels, plots),
and the exits (interrupted, diverged). ``train_command`` is the ``dhvc train`` command.
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from dhvc_ext import checkpoint, distributed, ops, tensorboard_log
from dhvc_ext.console import SCORES, ProgressBars, describe, format_terms, precision_text, threads_text
from dhvc_ext.exit_codes import (EXIT_DIVERGED, EXIT_EXISTS, EXIT_FORMAT, EXIT_MISMATCH, EXIT_NOT_FOUND,
                                 EXIT_NOT_WRITABLE, EXIT_OK, EXIT_TOO_FEW, EXIT_USAGE, CLIError, Interrupted)
from dhvc_ext.options import RESUME_OVERRIDES, train_fields
from dhvc_ext.profiling import write_profile
from dhvc_ext.run_files import (BEST, LABELS, LAST, LOG, METRICS, PLOTS, PROFILE_TRACE, PROFILE_TXT, RUN_FILES,
                                RUN_JSON, cuda_kernels, data_record, is_main, label_scores, load_checkpoint,
                                load_data, make_trainer, read_files, refuse_overwriting_inputs, rng_preserved,
                                scaling_tensors, set_threads, trainer_from_state, versions, write_or_fail)


#: Per-epoch scores are computed every epoch up to this many samples, every 5th joint epoch beyond.
METRICS_EVERY_EPOCH_UP_TO = 20000


class SignalGuard:
    """While installed, SIGINT and SIGTERM raise ``Interrupted`` in the main thread; inside ``critical()``
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
        raise Interrupted(signum)

    @contextlib.contextmanager
    def critical(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None and not self.fired:
            self.fired = True
            raise Interrupted(self.pending)


@dataclasses.dataclass
class Run:
    out: Path
    dataset: object
    trainer: object
    data_info: dict
    options: dict                 # metrics_every, plots, tensorboard: fixed for the run
    best_epoch: int = None
    best_loss: float = math.inf
    elapsed_before: float = 0.0   # wall seconds of earlier sessions
    sessions: int = 1
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def elapsed(self):
        return self.elapsed_before + time.perf_counter() - self.started

    def checkpoint(self):
        return checkpoint.make(self.trainer, data={**self.data_info, **scaling_tensors(self.dataset)},
                               run=dict(best_epoch=self.best_epoch, best_loss=self.best_loss,
                                        elapsed_s=self.elapsed(), sessions=self.sessions))


def prepare_out_dir(out, overwrite):
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
        shutil.rmtree(out / tensorboard_log.SUBDIR, ignore_errors=True)
    remove_temporaries(out)
    return out


def remove_temporaries(out):
    """What writes cut short by SIGKILL left in a run directory (``checkpoint.remove_temporaries``)."""
    try:
        checkpoint.remove_temporaries(out, RUN_FILES)
    except OSError as err:
        raise CLIError(EXIT_NOT_WRITABLE, f"{out}: cannot remove the temporary files of an interrupted write "
                       f"({err.strerror or err})") from None


def new_run(args, guard):
    from dhvc_ext.train import TrainConfig, Trainer

    missing = [flag for flag, value in (("--data", args.data), ("--clusters", args.clusters), ("--out", args.out))
               if value is None]
    if missing:
        raise CLIError(EXIT_USAGE, f"a new run needs {', '.join(missing)} (or --resume DIR to continue a run)")
    fields = {}
    for field, flag, *_ in train_fields():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            fields[field] = tuple(value) if isinstance(value, list) else value
    set_threads(args.threads)
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
    dataset = load_data(args.data, scaling, args.data_dir, args.subset, config.seed)
    try:
        config.check_rows(len(dataset))
    except ValueError:
        raise CLIError(EXIT_TOO_FEW, f"--clusters {config.n_clusters} is more than the {len(dataset)} samples of "
                       f"{dataset.name}; expected K <= n") from None
    if config.likelihood == "bernoulli" and not dataset.unit_interval:
        raise CLIError(EXIT_USAGE, f"--likelihood bernoulli models features in [0, 1], but --scaling {scaling} "
                       f"gives {dataset.name} features outside [0, 1]; use --scaling minmax, or --likelihood gaussian")
    refuse_overwriting_inputs({f"--out {args.out}": [Path(args.out) / name for name in RUN_FILES]},
                               read_files(args, args.data))
    check_tensorboard(bool(args.tensorboard))
    trainer = make_trainer(lambda: Trainer(config, dataset.n_features, image_shape=dataset.image_shape,
                                            unit_interval=dataset.unit_interval))
    main = is_main()
    out = prepare_out_dir(args.out, args.overwrite) if main else Path(args.out)
    every = args.metrics_every
    if every is None:
        every = 1 if len(dataset) <= METRICS_EVERY_EPOCH_UP_TO else 5
    run = Run(out, dataset, trainer, data_record(dataset, args.data, scaling, args.data_dir, args.subset,
                                                 config.seed),
               options=dict(metrics_every=every, plots=args.plots is not False, tensorboard=bool(args.tensorboard)))
    if not main:
        return run
    with guard.critical():  # both or neither: a run.json without last.pt could be neither resumed nor restarted
        write_or_fail(out / RUN_JSON, checkpoint.write_json, dict(
            format="dhvc_ext.run", format_version=1, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            command=["dhvc", *args.argv],
            data=run.data_info, config=dataclasses.asdict(config), options=run.options))
        write_or_fail(out / LAST, checkpoint.save, run.checkpoint())  # epoch 0: an early interruption is resumable too
    return run


def check_tensorboard(wanted):
    """--tensorboard without the tensorboard package: EXIT_NOT_FOUND, before anything is written."""
    problem = tensorboard_log.require() if wanted and is_main() else None
    if problem:
        raise CLIError(EXIT_NOT_FOUND, problem)


def comparable(config):
    """A configuration without the runtime keys that a resumed run may change."""
    return {k: v for k, v in checkpoint.json_safe(dict(config)).items() if k not in ("device", "num_threads")}


def resume_run(args, actions):
    given = sorted(k for k in actions if getattr(args, k) not in (None, False) and k not in RESUME_OVERRIDES)
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
    if not (out / LAST).exists() and not read_log(out):
        raise CLIError(EXIT_NOT_FOUND, f"--resume {out}: no {LAST} there: the run was stopped before its first "
                       f"checkpoint; start it again with `dhvc train --overwrite` and the options of {RUN_JSON}")
    ckpt, state, path = load_checkpoint(out / LAST)
    if comparable(state["config"]) != comparable(saved_config):
        diff = sorted(k for k in set(comparable(state["config"])) | set(comparable(saved_config))
                      if comparable(state["config"]).get(k) != comparable(saved_config).get(k))
        raise CLIError(EXIT_MISMATCH, f"{path} is from another run than {out / RUN_JSON} (they differ in "
                       f"{', '.join(diff)})")
    set_threads(args.threads)
    dataset = load_data(data_info["source"], data_info["scaling"], data_info.get("data_dir"),
                         data_info.get("subset"), data_info.get("subset_seed", 0))
    if (len(dataset), dataset.n_features) != (data_info["n_samples"], data_info["n_features"]):
        raise CLIError(EXIT_MISMATCH, f"the data changed since the run started: {data_info['source']} now gives "
                       f"{len(dataset)} x {dataset.n_features}, the run trained on {data_info['n_samples']} x "
                       f"{data_info['n_features']}")
    if state["n_features"] != dataset.n_features:
        raise CLIError(EXIT_MISMATCH, f"{path} holds a model for {state['n_features']} features; the run's data "
                       f"have {dataset.n_features}")
    trainer = trainer_from_state(state, path, device=args.device, threads=args.threads)
    options = dict(options)
    if args.plots is not None:
        options["plots"] = args.plots
    if args.metrics_every is not None:
        options["metrics_every"] = args.metrics_every
    if args.tensorboard is not None:
        options["tensorboard"] = args.tensorboard
    check_tensorboard(options.get("tensorboard", False))
    info = ckpt.get("run", {}) if isinstance(ckpt, dict) else {}
    run = Run(out, dataset, trainer, data_info, options=options, best_epoch=info.get("best_epoch"),
               best_loss=info.get("best_loss", math.inf) if info.get("best_loss") is not None else math.inf,
               elapsed_before=float(info.get("elapsed_s", 0.0)), sessions=int(info.get("sessions", 1)) + 1)
    if not is_main():
        return run
    remove_temporaries(out)
    check_best(run)
    # The log may hold an epoch after the checkpoint's (killed between the two writes): drop it.
    entries = [e for e in read_log(out) if e.get("epoch", 0) <= trainer.epoch]
    write_or_fail(out / LOG, checkpoint.atomic_write,
           lambda f: f.write("".join(json.dumps(e, allow_nan=False) + "\n" for e in entries).encode()))
    return run


def check_best(run):
    """best.pt must hold the best epoch that last.pt records. A kill or a full disk between the writes of
    last.pt and best.pt, or a hand, may have left it missing, damaged or older: when the best epoch is
    last.pt's own (as it is after such a failed write), best.pt is copied from last.pt again; otherwise the
    best model is lost, and the run stops with the code of the problem."""
    if run.best_epoch is None:  # no joint epoch yet: no best.pt to expect
        return
    best = run.out / BEST
    try:
        saved = checkpoint.trainer_state(load_checkpoint(best)[0])["epoch"]
        if saved == run.best_epoch:
            return
        code, problem = EXIT_MISMATCH, f"{best} holds epoch {saved}, not the best epoch {run.best_epoch}"
    except CLIError as err:
        code, problem = err.code, err.message
    if run.best_epoch == run.trainer.epoch:
        write_or_fail(best, lambda dst: checkpoint.copy(run.out / LAST, dst))
        print(f"dhvc train: {problem}; rewrote {BEST} from {LAST}, which holds that epoch", file=sys.stderr)
        return
    raise CLIError(code, f"--resume {run.out}: {problem}; {LAST} holds epoch {run.trainer.epoch}, so the best "
                   f"model of epoch {run.best_epoch} cannot be rebuilt; restore {BEST} from a copy, or start the run "
                   "again with --overwrite")


def read_log(out):
    entries = []
    with contextlib.suppress(FileNotFoundError):
        for line in (out / LOG).read_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    return entries


def epoch_callback(run, guard, bars, quiet, board=None):
    trainer, dataset = run.trainer, run.dataset
    cfg = trainer.config
    every = run.options["metrics_every"]

    def callback(_trainer, record):
        if not is_main():  # under torchrun only rank 0 evaluates, logs and checkpoints
            return False
        entry = dict(record)
        joint_epoch = trainer.epoch - cfg.pretrain_epochs
        if (dataset.y is not None and every and record["phase"] == "joint"
                and (joint_epoch % every == 0 or trainer.epoch == cfg.total_epochs)):
            with rng_preserved(trainer.device):
                entry.update(label_scores(dataset.y, trainer.predict(dataset)))
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
            write_or_fail(run.out / LAST, checkpoint.save, run.checkpoint())
            if is_best:
                write_or_fail(run.out / BEST, lambda dst: checkpoint.copy(run.out / LAST, dst))
            # reported inside the block, so that a signal held during the writes fires after the report
            if bars is not None:
                bars.epoch_done(entry)
            elif not quiet:
                scores = "  ".join(f"{s} {entry[s]:.3f}" for s in SCORES if entry.get(s) is not None)
                print(f"epoch {trainer.epoch:>{len(str(cfg.total_epochs))}}/{cfg.total_epochs} "
                      f"{record['phase']:<8} {format_terms(entry, loss_terms())}  "
                      f"{record['samples_per_s']:.0f} samples/s" + (f"  {scores}" if scores else "")
                      + ("  (best)" if is_best else ""), file=sys.stderr, flush=True)
        if board is not None:  # after the epoch is safe on disk
            with rng_preserved(trainer.device):
                board.epoch(trainer, dataset, entry, SCORES)
        return False

    return callback


def loss_terms():
    from dhvc_ext.models import LOSS_TERMS

    return LOSS_TERMS


def finish(run, quiet, board=None):
    """After the last epoch: final checkpoints, labels.npy, metrics.json, plots, the TensorBoard embedding
    (``board``). Returns the lines to print."""
    from dhvc_ext.cluster_start import start_kept

    trainer, dataset, out = run.trainer, run.dataset, run.out
    cfg = trainer.config
    # fit() fits the mixture after the last epoch when there is no joint phase: save that state; with no joint
    # epoch to choose from, the final model is also the best.
    if run.best_epoch is None:
        run.best_epoch, run.best_loss = trainer.epoch, math.nan
    write_or_fail(out / LAST, checkpoint.save, run.checkpoint())
    if run.best_epoch == trainer.epoch:
        write_or_fail(out / BEST, lambda dst: checkpoint.copy(out / LAST, dst))
    rules = ("head", "mixture") if trainer.model.head is not None else ("mixture",)
    rule = cfg.predict_with if cfg.predict_with in rules else "mixture"
    by_rule = {}
    for which in rules:
        predicted = trainer.predict(dataset, which)
        if which == rule:
            labels = predicted
        by_rule[which] = dict(label_scores(dataset.y, predicted) if dataset.y is not None else {},
                              cluster_sizes=np.bincount(predicted, minlength=cfg.n_clusters).tolist())
    write_or_fail(out / LABELS, checkpoint.save_npy, labels.astype(np.int64))
    best = dict(epoch=run.best_epoch, loss=run.best_loss)
    if dataset.y is not None and run.best_epoch != trainer.epoch:
        _, best_state, best_path = load_checkpoint(out / BEST)
        best_trainer = trainer_from_state(best_state, best_path, device=str(trainer.device))
        best.update(label_scores(dataset.y, best_trainer.predict(dataset)))
    elif dataset.y is not None:
        best.update({s: by_rule[rule][s] for s in SCORES})
    history = trainer.history
    metrics = dict(
        **({s: by_rule[rule][s] for s in SCORES} if dataset.y is not None else {}),
        predict_with=rule, n_samples=len(dataset), n_features=dataset.n_features, n_clusters=cfg.n_clusters,
        epochs=trainer.epoch, final_loss=history[-1]["loss"] if history else None,
        seconds=run.elapsed(), train_seconds=sum(r["seconds"] for r in history), sessions=run.sessions,
        by_rule=by_rule, best=best, data={k: v for k, v in run.data_info.items()}, config=dataclasses.asdict(cfg),
        versions=versions(), device=str(trainer.device), cuda_kernels_used=cuda_kernels(trainer.device)["used"],
        cuda_kernels_built=cuda_kernels(trainer.device)["built"], labels_file=LABELS,
        start=start_kept(trainer))
    write_or_fail(out / METRICS, checkpoint.write_json, metrics)
    written = [METRICS, LABELS, LOG, LAST, BEST]
    plots = []
    if run.options.get("plots", True):
        plots = write_plots(trainer, dataset, labels, out, history, read_log(out))
    if board is not None:
        board.embedding(trainer, trainer.encode(dataset).float().cpu().numpy(), labels, dataset.y)
        written.append(f"{tensorboard_log.SUBDIR}/")
    lines = [f"dhvc train: {describe(dataset)}, K={cfg.n_clusters}, {trainer.epoch} epochs on {trainer.device} "
             f"in {run.elapsed():.1f} s" + (f" ({run.sessions} sessions)" if run.sessions > 1 else "")]
    if dataset.y is not None:
        other = "".join(f"; rule {w}: acc {r['acc']:.3f}" for w, r in by_rule.items() if w != rule)
        lines.append("  " + "  ".join(f"{s} {by_rule[rule][s]:.3f}" for s in SCORES) + f"   (rule {rule}{other})")
    sizes = by_rule[rule]["cluster_sizes"]
    lines.append(f"  cluster sizes {min(sizes)}..{max(sizes)} ({sum(s == 0 for s in sizes)} empty); best epoch by "
                 f"training loss: {run.best_epoch}")
    if metrics["start"]["objectives"]:
        lines.append(f"  start kept: {metrics['start']['chosen']} (final objective "
                     + ", ".join(f"{k} {v:.4f}" for k, v in metrics["start"]["objectives"].items()) + ")")
    lines.append(f"  wrote {out}/: {' '.join(written)}")
    if plots:
        lines.append(f"  plots: {' '.join(str(out / p) for p in plots)}")
    return lines


def write_plots(trainer, dataset, labels, out, history, log):
    """The PNGs of a run (file names, in order)."""
    from dhvc_ext import plots

    written = [plots.losses(history, out / PLOTS["losses"], terms=loss_terms()).name]
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


def join_process_group(args):
    """Under torchrun (WORLD_SIZE > 1), join the process group: NCCL when the run trains on GPUs, else gloo."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return

    device = args.device or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and ops.cuda_available() else "cpu"
    try:
        distributed.init_from_env(device=torch.device(device))
    except (RuntimeError, ValueError) as err:
        raise CLIError(EXIT_USAGE, f"could not join the torchrun process group: {err}") from None


def train_command(args, actions):
    join_process_group(args)
    with SignalGuard() as guard:
        run = None
        try:
            run = resume_run(args, actions) if args.resume else new_run(args, guard)
            code = run_training(run, args, guard)
        except Interrupted as sig:
            return report_interruption(sig, run, args)

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


def run_training(run, args, guard):
    trainer, cfg = run.trainer, run.trainer.config
    main = is_main()
    quiet = bool(args.quiet) or not main  # under torchrun rank 0 alone reports
    progress = args.progress if args.progress is not None else (sys.stderr.isatty() and not quiet)
    progress = progress and main and trainer.world == 1  # the bars count one process's samples
    if not quiet:
        state = (f"resuming after epoch {trainer.epoch} of {cfg.total_epochs}" if args.resume
                 else f"{cfg.pretrain_epochs} pretraining + {cfg.epochs} joint epochs"
                 + (f" from each start ({', '.join(cfg.starts)})" if len(cfg.starts) > 1 else ""))
        print(f"dhvc train: {describe(run.dataset)}, K={cfg.n_clusters}, {state}, on {trainer.device} "
              f"({threads_text()}, {precision_text(trainer)}); writing to {run.out}", file=sys.stderr, flush=True)
    if getattr(args, "profile", False) and main:
        share, ours, header = write_profile(trainer, run.dataset, run.out, args.profile_steps or 10)
        print("\n".join(header) + f"\n  table: {run.out / PROFILE_TXT}, Chrome trace: {run.out / PROFILE_TRACE}",
              file=sys.stderr, flush=True)
    if trainer.epoch >= cfg.total_epochs and args.resume and not quiet:
        print("dhvc train: the run had finished training; writing its results again", file=sys.stderr)
    bars = ProgressBars(trainer, len(run.dataset)) if progress else None
    board = tensorboard_log.TensorBoardLog(run.out) if run.options.get("tensorboard") and main else None
    callback = epoch_callback(run, guard, bars, quiet, board)
    try:
        try:
            with bars if bars is not None else contextlib.nullcontext():
                trainer.fit(run.dataset, callback=callback,
                            batch_callback=None if bars is None else bars.batch_done)
        except FloatingPointError as err:
            raise CLIError(EXIT_DIVERGED, f"{err}. {run.out / LAST} keeps the run after epoch "
                           f"{saved_epoch(run)}; try a smaller --lr") from None
        if not main:
            return EXIT_OK
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # matplotlib's layout notes on tiny figures
            lines = finish(run, quiet, board)
    finally:
        if board is not None:
            board.close()
    print("\n".join(lines), flush=True)
    return EXIT_OK


def saved_epoch(run):
    entries = read_log(run.out)
    return entries[-1]["epoch"] if entries else 0


def report_interruption(sig, run, args):
    name = signal.Signals(sig.signum).name
    code = 128 + sig.signum
    if not is_main():
        return code
    if run is None:
        out = Path(args.resume or args.out or ".")
        resumable = (out / LAST).exists() and (out / RUN_JSON).exists()
        print(f"dhvc train: interrupted by {name} before training started"
              + (f"; continue with: dhvc train --resume {out}" if resumable else "; nothing was written"),
              file=sys.stderr)
        return code
    trainer, cfg, out = run.trainer, run.trainer.config, run.out
    saved = saved_epoch(run)
    if trainer.epoch >= cfg.total_epochs and saved >= cfg.total_epochs:
        print(f"dhvc train: interrupted by {name} after training finished, before all results were written; "
              f"{out / LAST} holds the trained model; write the results with: dhvc train --resume {out}",
              file=sys.stderr)
    else:
        print(f"dhvc train: interrupted by {name} during epoch {saved + 1} of {cfg.total_epochs}; {out / LAST} "
              f"holds the run after epoch {saved} (the unfinished epoch is dropped, so that resuming repeats it "
              f"exactly); continue with: dhvc train --resume {out}", file=sys.stderr)
    return code
