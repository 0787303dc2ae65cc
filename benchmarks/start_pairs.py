"""Both starts of DHVC's joint phase from one pretrained network: does the lower final objective pick the
better clustering? (The evidence behind cluster_init="best"; labels only to score.)

    OMP_NUM_THREADS=1 python benchmarks/start_pairs.py digits 0 minmax 0 1 2 3
    OMP_NUM_THREADS=1 python benchmarks/start_pairs.py fashion-mnist 10000 minmax 0 1 2

Arguments: data, subset rows (0: all), scaling, seeds. For each seed: pretrain with the defaults, then the
joint phase from cluster_init="mixture" and from "manifold", each from a copy of the pretrained state; one
JSON line per run: ACC / NMI / ARI, the final objective (``Trainer.evaluate_loss``, every term), seconds.
"""
import copy
import dataclasses
import json
import sys
import time
import warnings

import numpy as np
import torch

from dhvc_ext.data import load_dataset
from dhvc_ext.metrics import clustering_scores
from dhvc_ext.train import TrainConfig, Trainer


def main(argv):
    name, sub, scaling = argv[0], int(argv[1]), argv[2]
    seeds = [int(s) for s in argv[3:]] or [0]
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    data = load_dataset(name, scaling=scaling)
    if sub:
        data = data.subset(sub, seed=0)
    k = len(np.unique(data.y))
    for seed in seeds:
        cfg = TrainConfig(n_clusters=k, cluster_init="mixture", seed=seed)
        trainer = Trainer(cfg, data.n_features, unit_interval=data.unit_interval)
        t0 = time.time()
        trainer.fit(data, callback=lambda t, r: t.epoch == cfg.pretrain_epochs)
        state, rng, pretrain_s = copy.deepcopy(trainer.state_dict()), torch.get_rng_state(), time.time() - t0
        for start in ("mixture", "manifold"):
            t1 = time.time()
            torch.set_rng_state(rng)
            run = Trainer.from_state_dict(copy.deepcopy(state))
            run.config = dataclasses.replace(run.config, cluster_init=start)
            run.fit(data)
            terms = run.evaluate_loss(data, seed=0)
            scores = clustering_scores(data.y, run.predict(data))
            print(json.dumps(dict(data=name, rows=len(data), seed=seed, start=start, **scores,
                                  objective=terms["loss"], terms=terms, seconds=time.time() - t1,
                                  pretrain_s=pretrain_s)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
