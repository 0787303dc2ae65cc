"""``dhvc train --tensorboard`` (dhvc_ext.tensorboard_log): the event files of a digits run read back by
TensorBoard's EventAccumulator (scalars equal to log.jsonl, histograms per epoch, the embedding with its
metadata), the run unchanged by them, and a clear exit without the tensorboard package."""
import json
import sys

import numpy as np
import pytest
import torch

from dhvc_ext import checkpoint, cli, tensorboard_log
from dhvc_ext.data import load_dataset
from dhvc_ext.models import LOSS_TERMS

N, SEED = 300, 0
TINY = ["--data", "digits", "--subset", str(N), "--clusters", "5", "--hidden", "32", "--latent-dim", "4",
        "--pretrain-epochs", "2", "--epochs", "3", "--batch-size", "30", "--mixture-n-init", "1", "--threads", "1",
        "--device", "cpu", "--seed", str(SEED), "--quiet", "--no-plots",
        "--cluster-init", "mixture"]


def train(*args):
    return cli.main(["train", *TINY, *map(str, args)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (make installs it)")
    root = tmp_path_factory.mktemp("tb")
    assert train("--out", root / "board", "--tensorboard") == cli.EXIT_OK
    assert train("--out", root / "plain") == cli.EXIT_OK
    return root / "board", root / "plain"


def test_event_files_hold_every_epoch(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = runs
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    board = EventAccumulator(str(out / tensorboard_log.SUBDIR), size_guidance={"scalars": 0, "histograms": 0})
    board.Reload()
    tags = board.Tags()
    for term in LOSS_TERMS:
        events = board.Scalars(f"loss/{term}")
        assert [e.step for e in events] == [e["epoch"] for e in log]
        np.testing.assert_allclose([e.value for e in events], [e[term] for e in log], rtol=1e-6)
    scored = [e for e in log if e.get("acc") is not None]
    assert scored and [e.step for e in board.Scalars("score/acc")] == [e["epoch"] for e in scored]
    np.testing.assert_allclose([e.value for e in board.Scalars("score/nmi")], [e["nmi"] for e in scored], rtol=1e-6)
    assert {"train/samples_per_s", "train/grad_norm", "mixture/loglik"} <= set(tags["scalars"])
    posterior = board.Histograms("concentration/posterior")
    assert [h.step for h in posterior] == [e["epoch"] for e in log]
    # q(z|x)'s kappa lies in [kappa_min, kappa_max] = [1, 1000]; counted over the first rows of the data
    assert all(h.histogram_value.num == N and h.histogram_value.min >= 1.0 and h.histogram_value.max <= 1e3
               for h in posterior)
    # the mixture's K = 5 concentrations, from the first joint epoch on (the mixture is fitted then)
    mixture = board.Histograms("concentration/mixture")
    assert [h.step for h in mixture] == [e["epoch"] for e in log if e["phase"] == "joint"]
    final = checkpoint.load(out / "last.pt")["trainer"]["model"]
    kappa = torch.nn.functional.softplus(final["mixture.kappa_raw"].double()) + 0.0  # VMFMixture's kappa_min = 0
    assert mixture[-1].histogram_value.num == 5
    assert mixture[-1].histogram_value.min == pytest.approx(float(kappa.min()), rel=1e-6)
    assert mixture[-1].histogram_value.max == pytest.approx(float(kappa.max()), rel=1e-6)


def test_embedding_has_the_latent_means_with_cluster_and_class(runs):
    out, _ = runs
    config = (out / tensorboard_log.SUBDIR / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "latent_means:00005"' in config
    folder = out / tensorboard_log.SUBDIR / "00005" / "latent_means"
    rows = (folder / "metadata.tsv").read_text().splitlines()
    assert rows[0] == "cluster\tclass" and len(rows) == N + 1
    labels, y = np.load(out / "labels.npy"), load_dataset("digits").subset(N, seed=SEED).y
    assert [r.split("\t") for r in rows[1:]] == [[str(c), str(t)] for c, t in zip(labels, y)]
    means = np.loadtxt(folder / "tensors.tsv", delimiter="\t")
    assert means.shape == (N, 4)
    np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1.0, atol=1e-5)  # mean directions on S^3


def test_tensorboard_changes_nothing_the_run_computes(runs):
    board, plain = (checkpoint.load(d / "last.pt")["trainer"] for d in runs)
    for name, value in plain["model"].items():
        assert torch.equal(value, board["model"][name]), name
    assert [r["loss"] for r in board["history"]] == [r["loss"] for r in plain["history"]]
    np.testing.assert_array_equal(np.load(runs[0] / "labels.npy"), np.load(runs[1] / "labels.npy"))
    assert not (runs[1] / tensorboard_log.SUBDIR).exists()
    assert json.loads((runs[0] / "run.json").read_text())["options"]["tensorboard"] is True


def test_without_the_package_a_clear_error_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an absent package makes of it
    out = tmp_path / "run"
    assert train("--out", out, "--tensorboard") == cli.EXIT_NOT_FOUND
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("dhvc train: error: --tensorboard needs the tensorboard package")
    assert "pip install tensorboard" in err[0]
    assert not out.exists()
