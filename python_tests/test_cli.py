"""The ``dhvc`` command end to end on a digits subset: the files a run writes and what they must agree on,
resume after SIGTERM and SIGINT equal to an uninterrupted run, evaluate/predict against the run's own
labels, each user error with its exit code and one line on stderr, refused malicious checkpoints, --config
composition, the benchmark command.

Runs go through ``python -m dhvc_ext`` in subprocesses (the ``dhvc`` console script calls the same
``dhvc_ext.cli.main``); errors that stop before training are also checked in-process, which is faster.
Networks are tiny and runs a few epochs, so the file takes seconds, not minutes.
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dhvc_ext import checkpoint, cli
from dhvc_ext.data import load_dataset
from dhvc_ext.metrics import clustering_scores

ROOT = Path(__file__).resolve().parents[1]
N, K, SEED = 1000, 5, 3
# Ten epochs of about 0.1 s each: long enough to be interrupted between epochs 1 and 10.
TINY = ["--data", "digits", "--subset", str(N), "--clusters", str(K), "--hidden", "32", "--latent-dim", "4",
        "--pretrain-epochs", "2", "--epochs", "8", "--batch-size", "20", "--mixture-n-init", "2",
        "--threads", "1", "--seed", str(SEED), "--cluster-init", "mixture"]
PNGS = ("losses.png", "metrics.png", "latent_pca.png", "confusion.png", "cluster_sizes.png")


# The subprocesses run the dhvc_ext this process imported (its directory first on PYTHONPATH, the inherited
# PYTHONPATH after it), from a neutral directory: `python -m` puts the working directory first on sys.path.
CWD = tempfile.gettempdir()
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(cli.__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


def dhvc(*args):
    """Run ``python -m dhvc_ext ARGS``; returns the CompletedProcess (text stdout and stderr)."""
    return subprocess.run([sys.executable, "-m", "dhvc_ext", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=CWD, env=ENV)


def spawn(*args):
    return subprocess.Popen([sys.executable, "-m", "dhvc_ext", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=CWD, env=ENV)


def one_error_line(err, command, code_text=""):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"dhvc {command}: error: "), err
    assert code_text in lines[0], err
    return lines[0]


def log_entries(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def epochs_logged(run_dir):
    """Complete lines in the log (one may be half-written while we look)."""
    try:
        return (run_dir / "log.jsonl").read_text().count("\n")
    except FileNotFoundError:
        return 0


def subset_labels():
    return load_dataset("digits").subset(N, seed=SEED).y


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One complete run with progress bars and a profile (the reference of the resume tests)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    result = dhvc("train", *TINY, "--device", "cpu", "--out", out, "--progress", "--profile", "--profile-steps", "2")
    assert result.returncode == 0, result.stderr
    return out, result


def test_train_writes_a_consistent_run(run_dir):
    out, result = run_dir
    for name in ("run.json", "log.jsonl", "last.pt", "best.pt", "metrics.json", "labels.npy", *PNGS):
        assert (out / name).stat().st_size > 0, name
    for name in PNGS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))

    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: no NaN
    labels = np.load(out / "labels.npy")
    assert labels.shape == (N,) and labels.dtype == np.int64 and 0 <= labels.min() and labels.max() < K
    y = subset_labels()
    assert metrics["n_samples"] == N and metrics["n_clusters"] == K and metrics["epochs"] == 10
    for name, value in clustering_scores(y, labels).items():  # the scores are those of labels.npy
        assert metrics[name] == pytest.approx(value, abs=1e-12), name
    assert metrics["by_rule"][metrics["predict_with"]]["acc"] == metrics["acc"]
    assert metrics["config"]["latent_dim"] == 4 and metrics["config"]["hidden"] == [32]
    assert metrics["config"]["num_threads"] == 1 and metrics["config"]["seed"] == SEED
    assert metrics["versions"]["torch"] == torch.__version__ and metrics["versions"]["dhvc_ext"]
    assert metrics["cuda_kernels_used"] is False and metrics["device"] == "cpu"
    assert metrics["seconds"] >= metrics["train_seconds"] > 0

    log = log_entries(out)
    assert [e["epoch"] for e in log] == list(range(1, 11))
    assert [e["phase"] for e in log] == ["pretrain"] * 2 + ["joint"] * 8
    assert all(np.isfinite(e[t]) for e in log for t in ("loss", "recon", "kl_prior", "kl_post", "h_c"))
    assert all(e.get("acc") is not None for e in log if e["phase"] == "joint")  # small data: every epoch
    assert log[-1]["acc"] == pytest.approx(metrics["acc"])
    joint = [e for e in log if e["phase"] == "joint"]
    best = min(joint, key=lambda e: e["loss"])
    assert metrics["best"]["epoch"] == best["epoch"] and [e["epoch"] for e in log if e["best"]][-1] == best["epoch"]
    assert checkpoint.load(out / "best.pt")["trainer"]["epoch"] == best["epoch"]
    assert checkpoint.load(out / "last.pt")["trainer"]["epoch"] == 10

    # progress bars (tqdm on stderr): samples/s and every loss term
    for text in ("sample/s", "recon", "kl_prior", "kl_post", "h_c_given_z", "epoch/s"):
        assert text in result.stderr, text
    assert "plots:" in result.stdout and str(out / "confusion.png") in result.stdout

    profile = (out / "profile.txt").read_text()
    share = float(profile.split("share of CPU self time in dhvc_ext ops: ")[1].split("%")[0])
    assert 0 < share < 100 and "dhvc_ext::vmf_sample" in profile
    assert json.loads((out / "profile_trace.json").read_text())["traceEvents"]


def test_sigterm_then_sigint_then_resume_equals_the_uninterrupted_run(run_dir, tmp_path):
    reference, _ = run_dir
    out = tmp_path / "run"
    # The reference was profiled and had progress bars: neither may change what is computed.
    for signum, session in ((signal.SIGTERM, 1), (signal.SIGINT, 2)):
        args = ("train", *TINY, "--device", "cpu", "--out", out) if session == 1 else ("train", "--resume", out)
        done = epochs_logged(out)
        proc = spawn(*args)
        deadline = time.monotonic() + 120
        while epochs_logged(out) < done + 1:
            assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signum, err
        assert "Traceback" not in err
        message = [line for line in err.splitlines() if "interrupted" in line]
        assert len(message) == 1 and signal.Signals(signum).name in message[0], err
        assert f"dhvc train --resume {out}" in message[0]
        saved = checkpoint.load(out / "last.pt")["trainer"]["epoch"]
        assert [e["epoch"] for e in log_entries(out)] == list(range(1, saved + 1))
    result = dhvc("train", "--resume", out)
    assert result.returncode == 0, result.stderr

    ref_state, state = (checkpoint.load(d / "last.pt")["trainer"] for d in (reference, out))
    assert state["epoch"] == ref_state["epoch"] == 10
    for name, value in ref_state["model"].items():
        assert torch.equal(value, state["model"][name]), name
    assert [r["loss"] for r in state["history"]] == [r["loss"] for r in ref_state["history"]]
    np.testing.assert_array_equal(np.load(out / "labels.npy"), np.load(reference / "labels.npy"))
    ref_metrics, metrics = (json.loads((d / "metrics.json").read_text()) for d in (reference, out))
    for key in ("acc", "nmi", "ari", "by_rule", "best", "config"):
        assert metrics[key] == ref_metrics[key], key
    assert metrics["sessions"] == 3
    ref_log, log = log_entries(reference), log_entries(out)
    assert [(e["epoch"], e["loss"], e.get("acc")) for e in log] == [(e["epoch"], e["loss"], e.get("acc"))
                                                                    for e in ref_log]
    best = checkpoint.load(out / "best.pt")["trainer"]["model"]
    for name, value in checkpoint.load(reference / "best.pt")["trainer"]["model"].items():
        assert torch.equal(value, best[name]), name


def test_evaluate_and_predict_agree_with_the_run(run_dir, tmp_path):
    out, _ = run_dir
    metrics = json.loads((out / "metrics.json").read_text())
    # no --data: the checkpoint's own training data (the digits subset), scaled as in training
    result = dhvc("evaluate", "--checkpoint", out / "best.pt", "--json")
    assert result.returncode == 0, result.stderr
    evaluation = json.loads(result.stdout)
    for name in ("acc", "nmi", "ari"):
        assert evaluation[name] == pytest.approx(metrics["best"][name], abs=1e-12)
    assert evaluation["n_samples"] == N and sum(evaluation["cluster_sizes"]) == N
    assert np.isfinite(evaluation["loss"]["loss"])
    # the trained objective: the run's neighbour term (default --neighbors 10, --gamma 32) included
    loss = evaluation["loss"]
    assert loss["nbr"] > 0
    assert loss["loss"] == pytest.approx(loss["recon"] + loss["kl_prior"] + loss["kl_post"] - 4 * loss["h_c"]
                                         + loss["h_c_given_z"] + 32 * loss["nbr"], rel=1e-5)

    # new data in a file, raw 0..16 values: --scaling train scales them as the run did, so the labels of
    # these rows are the run's labels
    raw = tmp_path / "rows.npy"
    np.save(raw, load_dataset("digits", scaling=None).subset(N, seed=SEED).X)
    result = dhvc("predict", "--checkpoint", out, "--data", raw, "--output", tmp_path / "pred.npy",
                  "--proba", tmp_path / "proba.npy")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), np.load(out / "labels.npy"))
    proba = np.load(tmp_path / "proba.npy")
    assert proba.shape == (N, K) and np.allclose(proba.sum(1), 1, atol=1e-5)


class _Evil:
    """Pickles as a call to os.system: what a hostile 'checkpoint' does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def call(capsys):
    """Run ``cli.main`` in-process; returns (exit code, stdout, stderr)."""
    def run(*args):
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_user_errors_exit_with_their_code_and_one_line(call, run_dir, tmp_path):
    out, _ = run_dir
    model = ["--clusters", "3", "--hidden", "8", "--latent-dim", "3", "--pretrain-epochs", "1", "--epochs", "1",
             "--cluster-init", "mixture"]

    def train_error(data, code, *extra, text=""):
        target = tmp_path / f"out{code}"
        rc, _, err = call("train", "--data", data, "--out", target, *model, *extra)
        assert rc == code, err
        one_error_line(err, "train", text)
        return target

    target = train_error(tmp_path / "missing.npy", cli.EXIT_NOT_FOUND, text="no such file")
    assert not target.exists()  # nothing is created before the inputs are checked
    (tmp_path / "garbage.npy").write_bytes(b"not an array at all")
    train_error(tmp_path / "garbage.npy", cli.EXIT_FORMAT)
    (tmp_path / "table.xlsx").write_bytes(b"PK")
    train_error(tmp_path / "table.xlsx", cli.EXIT_FORMAT, text="supported formats")
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    train_error(tmp_path / "flat.npy", cli.EXIT_SHAPE, text="shape (10,)")
    X = np.random.default_rng(0).random((20, 4))
    X[7, 2] = np.nan
    np.save(tmp_path / "nan.npy", X)
    train_error(tmp_path / "nan.npy", cli.EXIT_NONFINITE, text="NaN")
    train_error("digits", cli.EXIT_TOO_FEW, "--subset", "2", text="--clusters 3")
    (tmp_path / "file").write_text("")
    rc, _, err = call("train", "--data", "digits", "--out", tmp_path / "file" / "sub", *model)
    assert rc == cli.EXIT_NOT_WRITABLE
    one_error_line(err, "train", "not writable")

    # a run directory is never overwritten by accident
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, _, err = call("train", "--data", "digits", "--out", out, *model)
    assert rc == cli.EXIT_EXISTS
    one_error_line(err, "train", "--resume")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # a bad option value, and --resume with options that would change the run
    rc, _, err = call("train", "--data", "digits", "--out", tmp_path / "x", *model, "--lr", "-1")
    assert rc == cli.EXIT_USAGE
    one_error_line(err, "train", "lr")
    rc, _, err = call("train", "--resume", out, "--epochs", "5")
    assert rc == cli.EXIT_USAGE
    one_error_line(err, "train", "--epochs")
    rc, _, err = call("train", "--resume", tmp_path)
    assert rc == cli.EXIT_NOT_FOUND
    one_error_line(err, "train", "run.json")


def test_divergence_stops_with_its_code_and_keeps_the_last_finite_epoch(call, monkeypatch, tmp_path):
    import dhvc_ext.train as train_module

    original = train_module.dhvc_loss

    def nan_when_joint(model, x, weights, *, phase="joint", **kwargs):
        terms = original(model, x, weights, phase=phase, **kwargs)
        if phase == "joint":
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(train_module, "dhvc_loss", nan_when_joint)
    out = tmp_path / "run"
    rc, _, err = call("train", "--data", "digits", "--subset", "200", "--clusters", "3", "--hidden", "8",
                      "--latent-dim", "3", "--pretrain-epochs", "2", "--epochs", "2", "--threads", "1",
                      "--mixture-n-init", "1", "--cluster-init", "mixture", "--out", out, "--quiet")
    assert rc == cli.EXIT_DIVERGED
    one_error_line(err, "train", "after epoch 2")
    assert checkpoint.load(out / "last.pt")["trainer"]["epoch"] == 2 and epochs_logged(out) == 2
    if not torch.cuda.is_available():
        rc, _, err = call("train", "--data", "digits", "--clusters", "3", "--out", tmp_path / "gpu", "--device",
                          "cuda")
        assert rc == cli.EXIT_USAGE
        one_error_line(err, "train", "cuda")
        assert not (tmp_path / "gpu").exists()


def test_checkpoint_errors(call, run_dir, tmp_path):
    out, _ = run_dir
    marker = tmp_path / "pwned"
    torch.save({"trainer": _Evil(marker)}, tmp_path / "evil.pt")
    rc, _, err = call("predict", "--checkpoint", tmp_path / "evil.pt", "--data", "digits", "--output",
                      tmp_path / "labels.npy")
    assert rc == cli.EXIT_UNSAFE
    one_error_line(err, "predict", "refused")
    assert not marker.exists() and not (tmp_path / "labels.npy").exists()

    data = (out / "last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    rc, _, err = call("evaluate", "--checkpoint", tmp_path / "truncated.pt")
    assert rc == cli.EXIT_FORMAT
    one_error_line(err, "evaluate", "truncated.pt")
    rc, _, err = call("evaluate", "--checkpoint", tmp_path / "none.pt")
    assert rc == cli.EXIT_NOT_FOUND
    one_error_line(err, "evaluate", "none.pt")

    # data with another number of features than the model takes
    np.save(tmp_path / "wide.npy", np.random.default_rng(0).random((30, 20)))
    rc, _, err = call("predict", "--checkpoint", out / "last.pt", "--data", tmp_path / "wide.npy", "--output",
                      tmp_path / "labels.npy")
    assert rc == cli.EXIT_MISMATCH
    one_error_line(err, "predict", "20")
    # a checkpoint whose configuration describes another model shape than its weights
    ckpt = checkpoint.load(out / "last.pt")
    ckpt["trainer"]["config"]["latent_dim"] = 6
    checkpoint.save(tmp_path / "reshaped.pt", ckpt)
    rc, _, err = call("evaluate", "--checkpoint", tmp_path / "reshaped.pt")
    assert rc == cli.EXIT_MISMATCH
    one_error_line(err, "evaluate", "size mismatch")
    # ... and as the last.pt of a run (another run's checkpoint dropped into its directory)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.copy(tmp_path / "reshaped.pt", copy / "last.pt")
    rc, _, err = call("train", "--resume", copy)
    assert rc == cli.EXIT_MISMATCH
    one_error_line(err, "train", "latent_dim")


def test_errors_through_the_entry_point(tmp_path):
    result = dhvc("train", "--data", tmp_path / "missing.csv", "--clusters", "3", "--out", tmp_path / "o")
    assert result.returncode == cli.EXIT_NOT_FOUND
    one_error_line(result.stderr, "train", "missing.csv")
    result = dhvc("train", "--clusters", "x")
    assert result.returncode == cli.EXIT_USAGE and "Traceback" not in result.stderr


def test_config_files_compose_with_flags(tmp_path):
    parser, actions = cli._build_parser()

    def options(name, text, *flags):
        path = tmp_path / name
        path.write_text(text)
        args = parser.parse_args(["train", "--config", str(path), *flags])
        cli.apply_config(args, actions["train"], actions)
        return args

    toml = 'data = "digits"\nclusters = 7\nlatent-dim = 5\nhidden = [64, 32]\nlr = 1\nplots = false\n'
    args = options("c.toml", toml, "--latent-dim", "9")
    assert (args.data, args.clusters, args.latent_dim, args.hidden, args.lr, args.plots) == \
        ("digits", 7, 9, [64, 32], 1.0, False)
    # per-command tables: keys outside them are shared, each command takes its own (output is predict's)
    args = options("c.toml", "n_clusters = 4\noutput = 'x.npy'\n[predict]\nwhich = 'head'\n[train]\nseed = 2\n")
    assert (args.clusters, args.seed) == (4, 2)
    args = options("c.json", '{"n_clusters": 4, "num_threads": 2}')
    assert (args.clusters, args.threads) == (4, 2)
    pytest.importorskip("yaml")
    args = options("c.yaml", "train:\n  clusters: 6\n  lr: 1e-3\npredict:\n  output: x.npy\n", "--clusters", "8")
    assert (args.clusters, args.lr) == (8, 1e-3)
    for text, code in (("clusterz = 3\n", cli.EXIT_USAGE), ("clusters = 'three'\n", cli.EXIT_USAGE),
                       ("clusters = 2.5\n", cli.EXIT_USAGE), ("arch = 'transformer'\n", cli.EXIT_USAGE),
                       ("clusters = [\n", cli.EXIT_FORMAT)):
        with pytest.raises(cli.CLIError) as info:
            options("bad.toml", text)
        assert info.value.code == code, text


def test_every_option_has_help_and_the_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    parser, actions = cli._build_parser()
    for command, by_dest in actions.items():
        for dest, action in by_dest.items():
            assert action.help and len(action.help) > 10, (command, dest)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dhvc"] == "dhvc_ext.cli:main"
    assert len(set(cli.EXIT_CODES.values())) == len(cli.EXIT_CODES)  # distinct exit codes


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
    target = tmp_path / "last.pt"
    checkpoint.save(target, {"epoch": 1})

    def fail(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        checkpoint.atomic_write(target, fail)
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    checkpoint.write_json(tmp_path / "m.json", {"x": float("nan"), "y": (1, 2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "y": [1, 2]}


def test_bench_runs_the_kernel_benchmarks_and_says_when_they_are_absent(call, tmp_path):
    rc, _, err = call("bench", "--benchmarks-dir", tmp_path)
    assert rc == cli.EXIT_NOT_FOUND
    one_error_line(err, "bench", "summarize.py")
    result = dhvc("bench", "--only", "bessel", "-k", "vmf_log_normalizer and float32 and (ours-t1 or scipy)",
                  "--benchmarks-dir", ROOT / "benchmarks")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| vmf_log_normalizer float32")]
    assert [r.split("|")[2].strip() for r in rows] == ["ours (1 thread)", "scipy (1 thread)"]


# ----------------------------------------------------------------------------------------------------------
# What a hostile new user tried (issue 17): each through cli.main, the console script's entry point.

SMALL_MODEL = ["--clusters", "3", "--hidden", "8", "--latent-dim", "3", "--pretrain-epochs", "1", "--epochs", "1",
               "--threads", "1", "--mixture-n-init", "1", "--cluster-init", "mixture", "--quiet", "--no-plots"]


def copy_run(run_dir, tmp_path):
    out, _ = run_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy


def test_predict_refuses_to_write_over_what_it_reads(call, run_dir, tmp_path):
    out = copy_run(run_dir, tmp_path)
    before = (out / "last.pt").read_bytes()
    rc, _, err = call("predict", "--checkpoint", out / "last.pt", "--output", out / "last.pt")
    assert rc == cli.EXIT_USAGE
    one_error_line(err, "predict", "last.pt")
    rc, _, err = call("predict", "--checkpoint", out, "--output", out / "last.pt")  # a run directory: its last.pt
    assert rc == cli.EXIT_USAGE and (out / "last.pt").read_bytes() == before
    rows = tmp_path / "rows.npy"
    np.save(rows, load_dataset("digits", scaling=None).subset(50, seed=0).X)
    data = rows.read_bytes()
    rc, _, err = call("predict", "--checkpoint", out, "--data", rows, "--output", rows)
    assert rc == cli.EXIT_USAGE
    one_error_line(err, "predict", "--data")
    rc, _, err = call("predict", "--checkpoint", out, "--data", rows, "--output", tmp_path / "p.npy", "--proba", rows)
    assert rc == cli.EXIT_USAGE and rows.read_bytes() == data
    rc, _, err = call("predict", "--checkpoint", out, "--output", tmp_path / "f.npy", "--proba", tmp_path / "f.npy")
    assert rc == cli.EXIT_USAGE and not (tmp_path / "f.npy").exists()
    one_error_line(err, "predict", "--proba")
    config = tmp_path / "c.toml"
    config.write_text("which = 'mixture'\n")
    rc, _, err = call("predict", "--config", config, "--checkpoint", out, "--output", config)
    assert rc == cli.EXIT_USAGE and config.read_text() == "which = 'mixture'\n"
    # without --data, the checkpoint's recorded training data count as read too (here: digits, no file)
    rc, _, err = call("predict", "--checkpoint", out, "--output", tmp_path / "labels.npy")
    assert rc == cli.EXIT_OK, err


def test_stale_temporaries_are_removed_at_resume_and_at_start(call, run_dir, tmp_path):
    out = copy_run(run_dir, tmp_path)
    stale = [out / ".last.pt.k3j9x0ab.tmp", out / ".best.pt.zz_1y2w3.tmp", out / ".metrics.json.q1w2e3r4.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    keep = out / ".notes.tmp"  # not a temporary of a run file: left alone
    keep.write_text("mine")
    rc, _, err = call("train", "--resume", out, "--quiet", "--no-plots")
    assert rc == cli.EXIT_OK, err
    assert not any(p.exists() for p in stale) and keep.exists()
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    rc, _, err = call("train", "--data", "digits", "--subset", "100", *SMALL_MODEL, "--out", out, "--overwrite")
    assert rc == cli.EXIT_OK, err
    assert not any(p.exists() for p in stale)


def test_a_device_that_is_not_one_is_a_usage_error_and_writes_nothing(call, tmp_path):
    for device in ("tpu", "", "mps", "cuda:-1", "meta", "cpu:0", "cuda:99"):
        target = tmp_path / f"run-{device or 'empty'}"
        rc, _, err = call("train", "--data", "digits", *SMALL_MODEL, "--out", target, "--device", device)
        assert rc == cli.EXIT_USAGE, (device, err)
        one_error_line(err, "train", "--device")
        assert not target.exists(), device


def test_a_bad_device_with_a_checkpoint_is_a_usage_error_not_a_mismatch(call, run_dir, tmp_path):
    out, _ = run_dir
    for command in (["evaluate", "--checkpoint", out], ["predict", "--checkpoint", out, "--output", tmp_path / "l.npy"],
                    ["train", "--resume", out]):
        rc, _, err = call(*command, "--device", "tpu")
        assert rc == cli.EXIT_USAGE, (command, err)
        one_error_line(err, command[0], "--device")
    assert not (tmp_path / "l.npy").exists()


def test_a_seed_beyond_32_bits_is_refused_before_training(call, tmp_path):
    for seed in (2**32, 2**40, -1):
        rc, _, err = call("train", "--data", "digits", *SMALL_MODEL, "--out", tmp_path / "s", "--seed", seed)
        assert rc == cli.EXIT_USAGE, (seed, err)
        one_error_line(err, "train", "--seed")
        assert not (tmp_path / "s").exists()
    rc, _, err = call("evaluate", "--checkpoint", tmp_path / "none.pt", "--subset", "10", "--seed", 2**32)
    assert rc == cli.EXIT_USAGE
    one_error_line(err, "evaluate", "--seed")


def test_a_damaged_best_checkpoint_at_resume(call, run_dir, tmp_path):
    out = copy_run(run_dir, tmp_path)
    last = checkpoint.load(out / "last.pt")
    assert last["run"]["best_epoch"] == last["trainer"]["epoch"] == 10  # the reference's best is its last epoch
    # best.pt gone, or left at an earlier epoch by a full disk during its copy while last.pt already records
    # the new best: last.pt holds that epoch, so best.pt is written again from it
    stale = checkpoint.load(out / "best.pt")
    stale["trainer"]["epoch"] = 8
    for damage in (lambda: (out / "best.pt").unlink(), lambda: checkpoint.save(out / "best.pt", stale)):
        damage()
        rc, _, err = call("train", "--resume", out, "--quiet", "--no-plots")
        assert rc == cli.EXIT_OK, err
        assert "rewrote best.pt" in err
        assert checkpoint.load(out / "best.pt")["trainer"]["epoch"] == 10
        assert json.loads((out / "metrics.json").read_text())["best"]["epoch"] == 10
    # a best epoch before the last one cannot be rebuilt: the run stops with the problem's code
    checkpoint.save(out / "last.pt", dict(last, run=dict(last["run"], best_epoch=7)))
    (out / "best.pt").unlink()
    rc, _, err = call("train", "--resume", out, "--quiet")
    assert rc == cli.EXIT_NOT_FOUND
    one_error_line(err, "train", "epoch 7")
    data = (run_dir[0] / "best.pt").read_bytes()
    (out / "best.pt").write_bytes(data[: len(data) // 3])
    rc, _, err = call("train", "--resume", out, "--quiet")
    assert rc == cli.EXIT_FORMAT
    one_error_line(err, "train", "best.pt")


def refused_by_evaluate_and_predict(call, path, tmp_path, code, text):
    for command in (("evaluate", "--checkpoint", path),
                    ("predict", "--checkpoint", path, "--output", tmp_path / "labels.npy")):
        rc, _, err = call(*command)
        assert rc == code, err
        one_error_line(err, command[0], text)
    assert not (tmp_path / "labels.npy").exists()


def test_a_checkpoint_with_non_finite_weights_is_refused(call, run_dir, tmp_path):
    ckpt = checkpoint.load(run_dir[0] / "last.pt")
    model = dict(ckpt["trainer"]["model"])
    name = next(k for k, v in model.items() if v.is_floating_point())
    model[name] = model[name] * float("nan")
    checkpoint.save(tmp_path / "nan.pt", dict(ckpt, trainer=dict(ckpt["trainer"], model=model)))
    refused_by_evaluate_and_predict(call, tmp_path / "nan.pt", tmp_path, cli.EXIT_FORMAT, "non-finite")


def test_a_file_that_is_no_torch_file_is_unreadable_not_unsafe(call, tmp_path):
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    refused_by_evaluate_and_predict(call, tmp_path / "random.pt", tmp_path, cli.EXIT_FORMAT, "not a torch file")
    np.save(tmp_path / "array.npy", np.zeros((3, 3)))
    refused_by_evaluate_and_predict(call, tmp_path / "array.npy", tmp_path, cli.EXIT_FORMAT, "not a torch file")


def test_a_checkpoint_with_a_foreign_configuration_is_unreadable(call, run_dir, tmp_path):
    ckpt = checkpoint.load(run_dir[0] / "last.pt")
    for field, value in (("colour", "blue"), ("latent_dim", -4), ("hidden", "wide"), ("seed", 2**32)):
        foreign = dict(ckpt, trainer=dict(ckpt["trainer"], config={**ckpt["trainer"]["config"], field: value}))
        checkpoint.save(tmp_path / "foreign.pt", foreign)
        refused_by_evaluate_and_predict(call, tmp_path / "foreign.pt", tmp_path, cli.EXIT_FORMAT, "configuration")


def flip_a_bit_in_tensor_data(path):
    """Flip one bit in the middle of the largest tensor's bytes of the torch zip archive at ``path``."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x10  # stored, not compressed
    path.write_bytes(bytes(raw))


def test_a_flipped_bit_in_the_weights_fails_the_checksum(call, run_dir, tmp_path):
    flipped = tmp_path / "flipped.pt"
    shutil.copy(run_dir[0] / "last.pt", flipped)
    flip_a_bit_in_tensor_data(flipped)
    refused_by_evaluate_and_predict(call, flipped, tmp_path, cli.EXIT_FORMAT, "checksum")


def test_an_empty_path_is_a_usage_error(call, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where --out "" would write the run
    rc, _, err = call("train", "--data", "digits", *SMALL_MODEL, "--out", "")
    assert rc == cli.EXIT_USAGE
    one_error_line(err, "train", "--out")
    rc, _, err = call("predict", "--checkpoint", "", "--output", "labels.npy")
    assert rc == cli.EXIT_USAGE
    one_error_line(err, "predict", "--checkpoint")
    assert not list(tmp_path.iterdir())


def test_quiet_and_progress_conflict(call, tmp_path):
    rc, _, err = call("train", "--data", "digits", *SMALL_MODEL, "--out", tmp_path / "r", "--progress")
    assert rc == cli.EXIT_USAGE  # SMALL_MODEL has --quiet
    one_error_line(err, "train", "--quiet and --progress")
    assert not (tmp_path / "r").exists()


def test_a_bernoulli_likelihood_needs_features_in_the_unit_interval(call, tmp_path):
    rc, _, err = call("train", "--data", "digits", "--subset", "100", *SMALL_MODEL, "--out", tmp_path / "r",
                      "--likelihood", "bernoulli", "--scaling", "standard")
    assert rc == cli.EXIT_USAGE
    one_error_line(err, "train", "bernoulli")
    assert not (tmp_path / "r").exists()


def test_a_config_file_naming_an_option_twice_is_refused(call, tmp_path):
    config = tmp_path / "c.toml"
    for text, named in (("latent_dim = 4\nlatent-dim = 6\n", "latent-dim"), ("clusters = 4\nn_clusters = 6\n", "n_clusters"),
                        ("[train]\npretrain_lr = 1e-3\npretrain-lr = 2e-3\n", "pretrain-lr")):
        config.write_text(text)
        rc, _, err = call("train", "--config", config, "--data", "digits", "--out", tmp_path / "r")
        assert rc == cli.EXIT_USAGE, text
        one_error_line(err, "train", named)
    assert not (tmp_path / "r").exists()
    # a table's key still replaces the same key outside the tables
    config.write_text("clusters = 4\n[train]\nclusters = 5\n")
    parser, actions = cli._build_parser()
    args = parser.parse_args(["train", "--config", str(config)])
    cli.apply_config(args, actions["train"], actions)
    assert args.clusters == 5


def test_data_beyond_float32_is_non_finite_data(call, tmp_path):
    X = np.random.default_rng(0).random((40, 4)) * 1e300  # finite in float64, inf as the float32 features
    np.save(tmp_path / "huge.npy", X)
    rc, _, err = call("train", "--data", tmp_path / "huge.npy", *SMALL_MODEL, "--out", tmp_path / "r")
    assert rc == cli.EXIT_NONFINITE
    one_error_line(err, "train", "float32")
    assert not (tmp_path / "r").exists()
