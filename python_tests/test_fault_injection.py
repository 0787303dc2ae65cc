"""SIGTERM and SIGINT at many points of a short ``dhvc train`` run, the middle of every file it writes among
them: each time the command exits with 128 + the signal's number (or 0, had it finished), prints one line
and no traceback, leaves no temporary file and a directory that resumes, and ``dhvc train --resume`` then
ends with exactly the uninterrupted run's results (weights of last.pt and best.pt, labels, scores, log).

The sweep calls the CLI's entry point ``cli.main`` in this process, which sends the signal to itself: from
inside the k-th file write, where torch.save's C++ writer (or json, NumPy, the copy of best.pt) is calling
the file's ``write``, for every k; and from the k-th loss evaluation of training. One run in a subprocess
gets SIGTERM from outside, while its first checkpoint is being written (the write slowed down by a wrapper
around the entry point), and is resumed by ``python -m dhvc_ext``. Below all this, ``checkpoint.atomic_write``
itself: a signal in the middle of torch.save reaches its handler once the file is complete.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import dhvc_ext.train as train_module
from dhvc_ext import checkpoint, cli

# Two pretraining and two joint epochs of 20 steps on 400 digits, on the CPU (bit for bit): about 0.5 s a run.
SMALL = ["--data", "digits", "--subset", "400", "--clusters", "4", "--hidden", "32", "--latent-dim", "4",
         "--pretrain-epochs", "2", "--epochs", "2", "--batch-size", "20", "--lr", "0.003", "--pretrain-lr", "0.003",
         "--mixture-n-init", "1", "--threads", "1", "--seed", "1", "--device", "cpu", "--quiet", "--no-plots",
         "--cluster-init", "mixture"]
CWD = tempfile.gettempdir()
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(cli.__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    n = torch.get_num_threads()  # the runs set 1 thread in this process
    yield
    torch.set_num_threads(n)


def _spin():
    """Let a pending signal's Python handler run here: sleep is cut short by it, a loop's backward jump
    checks for it (when another thread took the signal)."""
    time.sleep(0.002)
    for _ in range(1000):
        pass


class _SignalOnWrite:
    """A binary file whose first ``write`` sends ``signum`` to this process and lets its handler run there."""

    def __init__(self, f, signum):
        self._f, self._signum, self._sent = f, signum, False

    def write(self, data):
        n = self._f.write(data)
        if not self._sent:
            self._sent = True
            os.kill(os.getpid(), self._signum)
            _spin()
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)


class Injector:
    """Counts the file writes (``checkpoint.atomic_write``) and loss evaluations of the runs made while it is
    installed; sends ``signum`` inside the ``at``-th one of ``kind`` ("write" or "loss")."""

    def __init__(self, monkeypatch, kind=None, at=None, signum=None):
        self.kind, self.at, self.signum, self.writes, self.losses = kind, at, signum, [], 0
        original_write, original_loss = checkpoint.atomic_write, train_module.dhvc_loss

        def atomic_write(path, write):
            self.writes.append(Path(path).name)
            if self.kind == "write" and len(self.writes) == self.at:
                return original_write(path, lambda f: write(_SignalOnWrite(f, self.signum)))
            return original_write(path, write)

        def dhvc_loss(*args, **kwargs):
            self.losses += 1
            if self.kind == "loss" and self.losses == self.at:
                os.kill(os.getpid(), self.signum)
                _spin()
            return original_loss(*args, **kwargs)

        monkeypatch.setattr(checkpoint, "atomic_write", atomic_write)
        monkeypatch.setattr(train_module, "dhvc_loss", dhvc_loss)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_write_is_delivered_after_it(tmp_path, signum):
    target = tmp_path / "last.pt"
    seen = []

    def handler(number, frame):
        seen.append(number)
        raise _Stop

    previous = signal.signal(signum, handler)
    try:
        with pytest.raises(_Stop):  # once the file is complete, not inside torch.save's C++ writer
            checkpoint.atomic_write(target, lambda f: torch.save({"w": torch.ones(2, 3)}, _SignalOnWrite(f, signum)))
        assert signal.getsignal(signum) is handler
    finally:
        signal.signal(signum, previous)
    assert seen == [signum]
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_interrupted(code, err, signum, out):
    assert "Traceback" not in err, err
    assert code in (128 + signum, 0), err
    if code:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "interrupted" in lines[0] and signal.Signals(signum).name in lines[0], err
    left = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
    assert not left, f"temporary files left: {left}"
    # always a run to resume or none at all (a run.json without last.pt could be neither resumed nor restarted)
    assert (out / "run.json").exists() == (out / "last.pt").exists(), sorted(p.name for p in out.iterdir())


def result(out):
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return dict(
        models={name: checkpoint.load(out / name)["trainer"]["model"] for name in ("last.pt", "best.pt")},
        labels=np.load(out / "labels.npy"),
        metrics={k: metrics[k] for k in ("acc", "nmi", "ari", "by_rule", "best", "epochs")},
        log=[(e["epoch"], e["loss"], e.get("acc"), e["best"]) for e in log])


def assert_same_result(out, reference):
    got = result(out)
    for name, model in reference["models"].items():
        assert model.keys() == got["models"][name].keys()
        for key, value in model.items():
            assert torch.equal(value, got["models"][name][key]), (name, key)
    np.testing.assert_array_equal(got["labels"], reference["labels"])
    assert got["metrics"] == reference["metrics"]
    assert got["log"] == reference["log"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in this process), its results, and how many files and losses it writes and
    evaluates."""
    out = tmp_path_factory.mktemp("fault") / "reference"
    with pytest.MonkeyPatch.context() as monkeypatch:
        counter = Injector(monkeypatch)
        assert cli.main(["train", *SMALL, "--out", str(out)]) == 0
    return result(out), counter.writes, counter.losses


def test_signals_anywhere_leave_a_run_that_resumes_to_the_same_result(reference, tmp_path, monkeypatch, capsys):
    expected, writes, losses = reference
    # every write of the run (run.json, last.pt each epoch, best.pt, labels.npy, metrics.json), and three
    # losses: in the first pretraining epoch, the last pretraining epoch and the last joint epoch
    points = [("write", k) for k in range(1, len(writes) + 1)]
    points += [("loss", k) for k in (3, losses // 2 - 1, losses - 2)]
    assert {"run.json", "last.pt", "best.pt", "labels.npy", "metrics.json"} <= set(writes)
    for i, (kind, at) in enumerate(points):
        signum = (signal.SIGTERM, signal.SIGINT)[i % 2]
        out = tmp_path / f"{kind}{at}"
        with monkeypatch.context() as m:
            Injector(m, kind, at, signum)
            code, err = run_cli(capsys, "train", *SMALL, "--out", out)
        assert_interrupted(code, err, signum, out)
        if i % 3 == 0:  # a resumed session interrupted too: inside its first write (the log's rewrite)
            with monkeypatch.context() as m:
                Injector(m, "write", 1, signal.SIGTERM)
                code, err = run_cli(capsys, "train", "--resume", out)
            assert_interrupted(code, err, signal.SIGTERM, out)
        code, err = run_cli(capsys, "train", "--resume", out)
        assert code == 0, (kind, at, err)
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
        assert_same_result(out, expected)


# Wraps the entry point: the first write() of the first last.pt (inside torch.save's C++ writer) announces
# itself in a marker file and takes a second, so that the test's SIGTERM lands in the middle of it.
SLOW_FIRST_CHECKPOINT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dhvc_ext import checkpoint, cli

    marker = Path(sys.argv[1])
    original = checkpoint.atomic_write

    class Slow:
        def __init__(self, f):
            self.f = f
        def write(self, data):
            if not marker.exists():
                marker.write_text("writing")
                time.sleep(1.0)
            return self.f.write(data)
        def __getattr__(self, name):
            return getattr(self.f, name)

    def atomic_write(path, write):
        if Path(path).name == "last.pt" and not marker.exists():
            return original(path, lambda f: write(Slow(f)))
        return original(path, write)

    checkpoint.atomic_write = atomic_write
    sys.exit(cli.main(sys.argv[2:]))
""")


def test_sigterm_from_outside_during_the_first_checkpoint(reference, tmp_path):
    expected, _, _ = reference
    out, marker = tmp_path / "run", tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_FIRST_CHECKPOINT, str(marker), "train", *SMALL,
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=CWD, env=ENV)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert_interrupted(proc.returncode, err, signal.SIGTERM, out)
    assert checkpoint.load(out / "last.pt")["trainer"]["epoch"] == 0
    resumed = subprocess.run([sys.executable, "-m", "dhvc_ext", "train", "--resume", str(out)], capture_output=True,
                             text=True, timeout=300, cwd=CWD, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_result(out, expected)
