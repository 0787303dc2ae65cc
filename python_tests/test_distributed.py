"""Data-parallel training and EM on torch.distributed (gloo on the CPU), with 2 processes on 127.0.0.1.

The workers are this file run as a script: ``python test_distributed.py SCENARIO OUT_DIR`` with the variables
torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); each writes what it holds to
OUT_DIR/rank<r>.pt and the tests compare the ranks with each other and with one process. The CLI tests go
through torchrun itself (``python -m torch.distributed.run``): rank 0 alone writes, and a run interrupted by
SIGINT and resumed equals the uninterrupted one. Small networks on 600 digits, a few epochs.

Tolerances, and why:
- EM statistics, one EM step, the EM fit: the ranks hold bitwise the same mixture (one all-reduced sum, the
  same deterministic M-step); against one process on all the data, 1e-12 relative (only the order of the
  float64 sums differs).
- Training, ranks with each other: bitwise the same network, mixture and history (DDP's averaged gradients
  and the all-reduced EM statistics are the same bytes on every rank).
- Training, 2 ranks against 1 on the same global batches (the ranks' shares of each step are exactly the
  one-process batch, see dhvc_ext.distributed): not bitwise, for two reasons. Each rank draws its own vMF
  posterior samples (one process draws them all from one stream), and the EMI's batch marginal qbar in
  H(C) is each rank's batch mean (B/W rows), not the global one: the one term that is not a per-sample mean.
  So the comparison is statistical, on test_train.py's end-to-end configuration: every epoch's mean
  reconstruction and loss without the neighbour term within 5 % relative (3.5 % and 3.8 % measured at most),
  the neighbour term within 0.3 nats (0.17 measured at most), both runs finding the digits (ACC > 0.5, NMI > 0.45; ACC 0.61-0.68 measured) and largely the
  same clusters (NMI > 0.5 between the two labelings; 0.74 and 0.69 measured).
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
WORLD = 2
# One small configuration for every training scenario: 2 pretraining + 3 joint epochs on 300 digits.
CONFIG = dict(n_clusters=5, hidden=(32,), latent_dim=4, pretrain_epochs=2, epochs=3, batch_size=50,
              mixture_n_init=2, num_threads=1, seed=3, cluster_init="mixture")
N_ROWS = 600
STOP_AT = 3  # the epoch after which the training scenario also saves its state (inside the joint phase)


def em_data():
    """3000 unit rows in d = 6 from 4 separated vMF components (the same on every rank)."""
    from dhvc_ext.ops import vmf_sample

    g = torch.Generator().manual_seed(0)
    mu = torch.nn.functional.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1)
    kappa = torch.tensor([20.0, 40.0, 60.0, 30.0], dtype=torch.float64)
    labels = torch.randint(4, (3000,), generator=g)
    return vmf_sample(mu[labels], kappa[labels], generator=g)


def start_mixture():
    from dhvc_ext.mixture import VMFMixture

    return VMFMixture(4, 6, kappa_init=5.0, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def mixture_of(est):
    return dict(means=torch.as_tensor(est.means_), weights=torch.as_tensor(est.weights_),
                concentrations=torch.as_tensor(est.concentrations_), lower_bound=est.lower_bound_,
                n_iter=est.n_iter_)


# ---------------------------------------------------------------------------------------------------------
# the workers


def worker_em(out):
    from dhvc_ext import distributed as dist
    from dhvc_ext import ops
    from dhvc_ext.mixture import VonMisesFisherMixture

    z = em_data()
    start, stop = dist.shard_range(z.shape[0], dist.rank(), dist.world_size())
    block = z[start:stop]
    model = start_mixture()
    n_k, s_k, total = ops.vmfmm_em_statistics(block, model.mu, model.kappa, model.log_pi)
    dist.all_reduce_sum([n_k, s_k, total])
    loglik = model.em_step(block, distributed=True)
    fit = dict(n_components=4, n_init=2, random_state=0, tol=1e-10, max_iter=300)
    in_memory = VonMisesFisherMixture(**fit).fit(block.numpy(), distributed=True)
    chunks = [block[i:i + 200] for i in range(0, block.shape[0], 200)]
    streamed = VonMisesFisherMixture(**fit).fit(chunks, distributed=True)
    sampled = VonMisesFisherMixture(**fit, init_size=500).fit(chunks, distributed=True)
    torch.save(dict(stats=(n_k, s_k, total), loglik=loglik, step={k: v.detach() for k, v in model.state_dict().items()},
                    in_memory=mixture_of(in_memory), streamed=mixture_of(streamed), sampled=mixture_of(sampled)),
               out / f"rank{dist.rank()}.pt")


def digits():
    from dhvc_ext.data import load_dataset

    return load_dataset("digits").subset(N_ROWS, seed=0)


def config_in(out):
    """CONFIG, with the overrides of OUT_DIR/config.json when the launcher wrote one."""
    path = out / "config.json"
    return {**CONFIG, **(json.loads(path.read_text()) if path.exists() else {})}


def trained_state(trainer, data):
    targets = trainer.update_targets(data)  # a collective: every rank calls it
    return dict(model={k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                history=[dict(r) for r in trainer.history], labels=trainer.predict(data, "mixture"),
                neighbor_index=trainer.neighbor_index.clone(), targets=targets.clone(),
                world=trainer.world, rank=trainer.rank)


def worker_train(out):
    from dhvc_ext.train import TrainConfig, Trainer

    data = digits()
    trainer = Trainer(TrainConfig(**config_in(out)), data.n_features)

    def callback(t, record):
        if t.epoch == STOP_AT and t.rank == 0:
            torch.save(t.state_dict(), out / "state.pt")  # what `dhvc train` writes after this epoch

    trainer.fit(data, callback=callback)
    torch.save(trained_state(trainer, data), out / f"rank{trainer.rank}.pt")


def worker_resume(out):
    from dhvc_ext.train import Trainer

    data = digits()
    torch.manual_seed(999)  # whatever the global generator holds before the resume must not matter
    trainer = Trainer.from_state_dict(torch.load(out / "state.pt", weights_only=True))
    trainer.fit(data)
    torch.save(trained_state(trainer, data), out / f"resumed{trainer.rank}.pt")


WORKERS = dict(em=worker_em, train=worker_train, resume=worker_resume)


# ---------------------------------------------------------------------------------------------------------
# launching


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment():
    """The test process's environment, with this dhvc_ext first on the path and one thread per process."""
    path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(WORLD)}


def launch(scenario, out):
    """Run the scenario on WORLD processes (the environment torchrun would give them); fail with their
    output if any fails."""
    env = environment()
    procs = [subprocess.Popen([sys.executable, str(HERE), scenario, str(out)], cwd=out, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(WORLD)]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for r, (p, text) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {r} of {scenario!r} exited with {p.returncode}:\n{text[-4000:]}"
    return [torch.load(out / f"{'resumed' if scenario == 'resume' else 'rank'}{r}.pt", weights_only=False)
            for r in range(WORLD)]


def assert_same(a, b, where=""):
    """Bitwise equality of nested dicts / lists / tensors / numbers."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


# ---------------------------------------------------------------------------------------------------------
# the tests


def test_em_statistics_all_reduce_and_distributed_fit_match_one_process(tmp_path):
    from dhvc_ext import ops
    from dhvc_ext.mixture import VonMisesFisherMixture

    ranks = launch("em", tmp_path)
    for other in ranks[1:]:
        assert_same(ranks[0], other, "rank")
    got = ranks[0]
    z = em_data()
    model = start_mixture()
    n_k, s_k, total = ops.vmfmm_em_statistics(z, model.mu, model.kappa, model.log_pi)
    for ours, one in zip(got["stats"], (n_k, s_k, total)):
        torch.testing.assert_close(ours.double(), one.double(), rtol=1e-12, atol=1e-12)
    loglik = model.em_step(z)
    assert abs(got["loglik"] - loglik) <= 1e-12 * abs(loglik)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(got["step"][name], value, rtol=1e-12, atol=1e-12)
    one = VonMisesFisherMixture(4, n_init=2, random_state=0, tol=1e-10, max_iter=300).fit(z.numpy())
    for key in ("in_memory", "streamed"):  # the shards' samples together are all of z: the same fit
        fit = got[key]
        assert fit["n_iter"] == one.n_iter_, key
        assert abs(fit["lower_bound"] - one.lower_bound_) <= 1e-12 * abs(one.lower_bound_), key
        np.testing.assert_allclose(fit["means"].numpy(), one.means_, rtol=0, atol=1e-10, err_msg=key)
        np.testing.assert_allclose(fit["concentrations"].numpy(), one.concentrations_, rtol=1e-9, err_msg=key)
    # from a 500-row sample of the 3000: another start, the same optimum of these separated components
    assert abs(got["sampled"]["lower_bound"] - one.lower_bound_) <= 1e-6 * abs(one.lower_bound_)


def test_two_process_training_agrees_across_ranks_and_resumes_exactly(tmp_path):
    from dhvc_ext.metrics import clustering_scores
    from dhvc_ext.train import TrainConfig, Trainer

    ranks = launch("train", tmp_path)
    assert [r["world"] for r in ranks] == [WORLD] * WORLD and [r["rank"] for r in ranks] == list(range(WORLD))
    for other in ranks[1:]:
        for key in ("model", "history", "labels", "neighbor_index", "targets"):
            assert_same(ranks[0][key], other[key], key)  # the same network, mixture and records everywhere
    # each rank found the neighbours of its block of rows; gathered, they are one process's neighbours
    from dhvc_ext.neighbors import knn_indices
    x = torch.nn.functional.normalize(torch.as_tensor(digits().features(np.arange(N_ROWS))).double(), dim=1)
    index = ranks[0]["neighbor_index"]
    ref = knn_indices(x, index.shape[1])
    sim = x @ x.T
    torch.testing.assert_close(sim.gather(1, index), sim.gather(1, ref), atol=1e-6, rtol=0)
    history = ranks[0]["history"]
    assert len(history) == CONFIG["pretrain_epochs"] + CONFIG["epochs"]
    assert all(np.isfinite(r["loss"]) for r in history) and "mixture_loglik" in history[-1]

    # resume from the state rank 0 saved after epoch STOP_AT, on as many processes: the uninterrupted run
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["world_size"] == WORLD and len(state["rng_ranks"]) == WORLD and state["epoch"] == STOP_AT
    resumed = launch("resume", tmp_path)
    for r in range(WORLD):
        assert_same(resumed[r]["model"], ranks[0]["model"], "resumed model")
        assert [h["loss"] for h in resumed[r]["history"]] == [h["loss"] for h in history]



def test_ranks_agree_with_a_gradient_trained_mixture_and_uneven_shares(tmp_path):
    # the mixture in DDP's parameter set, and a global batch of 49 split 25 + 24 (the loss weighted by share)
    (tmp_path / "config.json").write_text(json.dumps(dict(mixture_update="gradient", batch_size=49)))
    ranks = launch("train", tmp_path)
    assert_same(ranks[0]["model"], ranks[1]["model"], "model")
    assert_same(ranks[0]["history"], ranks[1]["history"], "history")
    assert ranks[0]["history"][-1]["recon"] < ranks[0]["history"][0]["recon"]


# test_train.py's end-to-end configuration: long enough for the clusters to form, so that two runs can be
# compared by what they find (a few epochs of a tiny network are still on the mean-image plateau).
COMPARED = dict(n_clusters=10, hidden=(128, 128), latent_dim=8, pretrain_epochs=20, epochs=8, batch_size=64,
                mixture_n_init=3)


def test_two_processes_match_one_on_the_same_global_batches(tmp_path):
    from dhvc_ext.metrics import clustering_scores
    from dhvc_ext.train import TrainConfig, Trainer

    (tmp_path / "config.json").write_text(json.dumps(COMPARED))
    two = launch("train", tmp_path)[0]
    data = digits()
    one = Trainer(TrainConfig(**{**CONFIG, **COMPARED}), data.n_features)
    one.fit(data)
    assert one.world == 1 and len(one.history) == len(two["history"])
    for a, b in zip(two["history"], one.history):
        assert (a["epoch"], a["phase"]) == (b["epoch"], b["phase"])
        # the stated tolerance: every epoch's mean reconstruction and loss within 5 % (measured: 3.5 % at
        # most, where the two runs leave the mean-image plateau a few steps apart; see the module doc)
        assert abs(a["recon"] - b["recon"]) <= 0.05 * abs(b["recon"]), (a, b)
        # the neighbour term (weight gamma = 32) apart: it follows the two runs' clusters, which differ by a
        # few points of agreement (0.72 against 0.55 nats at most, measured), and would dominate the loss
        gamma = one.weights.gamma
        rest_a, rest_b = a["loss"] - gamma * a["nbr"], b["loss"] - gamma * b["nbr"]
        assert abs(rest_a - rest_b) <= 0.05 * abs(rest_b), (a, b)
        assert abs(a["nbr"] - b["nbr"]) <= 0.3, (a, b)
    labels_one = one.predict(data, "mixture")
    for labels in (two["labels"], labels_one):  # both find the digits (chance: ACC ~0.1-0.2, NMI ~0)
        scores = clustering_scores(data.y, labels)
        assert scores["acc"] > 0.5 and scores["nmi"] > 0.45, scores
    assert clustering_scores(labels_one, two["labels"])["nmi"] > 0.5  # and largely the same clusters


def test_loading_a_two_process_state_in_one_process_refuses_to_continue(tmp_path):
    import pytest

    from dhvc_ext.train import TrainConfig, Trainer

    data = digits()
    trainer = Trainer(TrainConfig(**{**CONFIG, "pretrain_epochs": 1, "epochs": 1}), data.n_features)
    state = trainer.state_dict()
    state["world_size"] = WORLD
    resumed = Trainer.from_state_dict(state)
    resumed.predict(data)  # predicting needs no process group
    with pytest.raises(ValueError, match="saved by 2 process"):
        resumed.fit(data)


def test_batch_sampler_shards_are_the_one_process_batches():
    from dhvc_ext.distributed import DistributedBatchSampler, shard_range

    n, size, seed = 103, 20, 12345
    loader = torch.utils.data.DataLoader(range(n), batch_size=size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    one = [b.tolist() for b in loader]
    for world in (1, 2, 3):
        shards = [list(DistributedBatchSampler(n, size, shuffle=True, seed=seed, drop_last=True, rank_=r, world=world))
                  for r in range(world)]
        assert all(len(s) == len(one) for s in shards)
        for step, batch in enumerate(one):
            assert sum((s[step] for s in shards), []) == batch, (world, step)
    blocks = [shard_range(10, r, 3) for r in range(3)]
    assert blocks == [(0, 3), (3, 6), (6, 10)]


def torchrun(args, cwd, wait=True):
    """``python -m torch.distributed.run`` (torchrun) with WORLD processes on a free local port, running
    ``python -m dhvc_ext ARGS``; the CompletedProcess, or the Popen when not ``wait``."""
    env = environment()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--master-addr",
           "127.0.0.1", "--master-port", env["MASTER_PORT"], "-m", "dhvc_ext", *map(str, args)]
    env = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


TRAIN_ARGS = ["train", "--data", "digits", "--subset", N_ROWS, "--clusters", 5, "--hidden", 32, "--latent-dim", 4,
              "--mixture-n-init", 2, "--threads", 1, "--seed", 3, "--device", "cpu", "--cluster-init", "mixture"]


def test_dhvc_train_under_torchrun_rank_zero_alone_writes(tmp_path):
    out = tmp_path / "run"
    done = torchrun(TRAIN_ARGS + ["--pretrain-epochs", 2, "--epochs", 2, "--batch-size", 50, "--out", out], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # one summary (rank 0's) and one log line per epoch: the other rank neither printed nor wrote
    assert done.stdout.count("dhvc train:") == 1, done.stdout
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3, 4]
    assert {p.name for p in tmp_path.iterdir()} == {"run"}  # nothing written beside --out
    assert (out / "metrics.json").exists() and (out / "labels.npy").exists()
    from dhvc_ext import checkpoint
    state = checkpoint.trainer_state(checkpoint.load(out / "last.pt"))
    assert state["world_size"] == WORLD and len(state["rng_ranks"]) == WORLD


def test_dhvc_train_under_torchrun_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    import signal
    import time

    from dhvc_ext import checkpoint

    args = TRAIN_ARGS + ["--pretrain-epochs", 4, "--epochs", 16, "--batch-size", 20, "--no-plots"]
    done = torchrun(args + ["--out", tmp_path / "full"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    part = tmp_path / "part"
    proc = torchrun(args + ["--out", part], tmp_path, wait=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (part / "log.jsonl").exists() and len((part / "log.jsonl").read_text().splitlines()) >= 6:
            break  # inside the joint phase
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # torchrun passes it on to both ranks
    proc.communicate(timeout=120)
    saved = len((part / "log.jsonl").read_text().splitlines())
    assert 6 <= saved < 20, saved
    done = torchrun(["train", "--resume", part], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    full = checkpoint.trainer_state(checkpoint.load(tmp_path / "full" / "last.pt"))
    resumed = checkpoint.trainer_state(checkpoint.load(part / "last.pt"))
    assert resumed["epoch"] == full["epoch"] == 20
    assert_same(resumed["model"], full["model"], "model")
    assert [e["loss"] for e in resumed["history"]] == [e["loss"] for e in full["history"]]


if __name__ == "__main__":
    torch.set_num_threads(1)
    from dhvc_ext import distributed

    assert distributed.init_from_env(device="cpu"), "expected torchrun's environment with WORLD_SIZE > 1"
    try:
        WORKERS[sys.argv[1]](Path(sys.argv[2]))
    finally:
        torch.distributed.destroy_process_group()
