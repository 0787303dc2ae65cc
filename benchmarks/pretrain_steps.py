"""Is the autoencoder under-trained? Pretrain for a number of optimiser STEPS and score what follows.

    OMP_NUM_THREADS=1 python benchmarks/pretrain_steps.py --data digits --seeds 0 1 2 --steps 0 5000 15000 \
        --out benchmarks/results/pretrain_steps_digits.jsonl
    OMP_NUM_THREADS=1 python benchmarks/pretrain_steps.py --data fashion-mnist --subset 10000 --seeds 0 \
        --steps 0 15000 --out benchmarks/results/pretrain_steps_fashion10k.jsonl

Steps 0 means the default (TrainConfig.pretrain_epochs = 50). Other step counts become
epochs = ceil(steps / steps_per_epoch), steps_per_epoch = n // batch (training drops the last short batch).
Pretraining has no learning-rate schedule (constant Adam at pretrain_lr; StepLR starts with the joint
phase), so ONE pretraining run per seed passes through every requested length: the state at epoch E is
exactly the state a run with pretrain_epochs = E has when its joint phase begins (same batch orders, same
random stream). At each requested epoch the run is scored on a copy (torch's random state saved and restored,
so the pretraining continues unchanged):
  - "ae_kmeans": scikit-learn KMeans(K, n_init=10) on the L2-normalised encoder means mu_x;
  - "n2d": dhvc_ext.manifold.umap_gmm on mu_x (20 neighbours);
  - "dhvc_mixture" / "dhvc_manifold": the joint phase (default TrainConfig otherwise) from that start,
    from a copy of the pretrained state with pretrain_epochs = E; final ACC / NMI / ARI and the final
    objective (Trainer.evaluate_loss on all rows, as cluster_init="best" scores its starts).
One JSON line per (seed, length, method). Labels only to score (dhvc_ext.metrics.clustering_scores).
"""
import argparse
import copy
import dataclasses
import json
import math
import time
import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans

from dhvc_ext.data import load_dataset
from dhvc_ext.manifold import umap_gmm
from dhvc_ext.metrics import clustering_scores
from dhvc_ext.train import TrainConfig, Trainer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="digits")
    p.add_argument("--subset", type=int, default=0)
    p.add_argument("--scaling", default="minmax")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, nargs="+", default=[0, 15000], help="0: the default 50 epochs")
    p.add_argument("--starts", nargs="+", default=["mixture", "manifold"])
    p.add_argument("--no-peers", action="store_true", help="skip AE + k-means and N2D")
    p.add_argument("--dhvc-steps", type=int, nargs="*", default=None,
                   help="lengths (as in --steps) that get the DHVC joint phases (default: all of --steps)")
    p.add_argument("--save-dir", default=None, help="torch.save each pretrained snapshot there")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    data = load_dataset(args.data, scaling=args.scaling)
    if args.subset:
        data = data.subset(args.subset, seed=0)
    k = len(np.unique(data.y))
    out = open(args.out, "a")

    def emit(**rec):
        line = json.dumps(rec)
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    for seed in args.seeds:
        base = TrainConfig(n_clusters=k, seed=seed)
        probe = Trainer(dataclasses.replace(base, cluster_init="mixture"), data.n_features,
                        unit_interval=data.unit_interval)
        b = probe.batch_size(len(data))
        spe = len(data) // b if len(data) > b else 1
        lengths = {}  # epoch -> requested steps
        for s in args.steps:
            lengths[base.pretrain_epochs if s == 0 else math.ceil(s / spe)] = s
        e_max = max(lengths)
        cfg = dataclasses.replace(base, cluster_init="mixture", pretrain_epochs=e_max)
        trainer = Trainer(cfg, data.n_features, unit_interval=data.unit_interval)
        t0, paused = time.time(), [0.0]

        def score(t):
            t_eval = time.time()
            epoch = t.epoch
            pre_s = t_eval - t0 - paused[0]
            state = copy.deepcopy(t.state_dict())
            state["config"] = dict(state["config"], pretrain_epochs=epoch)
            common = dict(data=args.data, rows=len(data), seed=seed, requested_steps=lengths[epoch],
                          pretrain_epochs=epoch, pretrain_steps=epoch * spe, batch=b,
                          pretrain_s=round(pre_s, 1), recon=t.history[-1]["recon"],
                          pretrain_loss=t.history[-1]["loss"])
            with torch.random.fork_rng():
                if not args.no_peers:
                    mu = t.encode(data).cpu().numpy().astype(np.float64)
                    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
                    t1 = time.time()
                    lab = KMeans(k, n_init=10, random_state=seed).fit_predict(mu)
                    emit(**common, method="ae_kmeans", **clustering_scores(data.y, lab), seconds=time.time() - t1)
                    t1 = time.time()
                    lab = umap_gmm(mu, k, n_neighbors=20, seed=seed).argmax(1)
                    emit(**common, method="n2d", **clustering_scores(data.y, lab), seconds=time.time() - t1)
                rng = torch.get_rng_state()
                if args.save_dir:
                    import os
                    os.makedirs(args.save_dir, exist_ok=True)
                    torch.save(state, os.path.join(args.save_dir, f"{args.data}_{len(data)}_seed{seed}_ep{epoch}.pt"))
                dhvc = args.dhvc_steps is None or lengths[epoch] in args.dhvc_steps
                for start in (args.starts if dhvc else ()):
                    t1 = time.time()
                    torch.set_rng_state(rng)
                    st = copy.deepcopy(state)
                    st["config"] = dict(st["config"], cluster_init=start)
                    run = Trainer.from_state_dict(st)
                    run.fit(data)
                    terms = run.evaluate_loss(data, seed=0)
                    emit(**common, method=f"dhvc_{start}", **clustering_scores(data.y, run.predict(data)),
                         objective=terms["loss"], terms=terms, seconds=time.time() - t1)
            paused[0] += time.time() - t_eval

        def callback(t, record):
            if t.epoch in lengths:
                score(t)
            return t.epoch >= e_max

        trainer.fit(data, callback=callback)
    out.close()


if __name__ == "__main__":
    main()
