"""DHVC results table: DHVC and the autoencoder baselines on a data set, over several seeds.

    python benchmarks/dhvc_results.py --data digits --seeds 0 1 2 --batch-size 64
    python benchmarks/dhvc_results.py --data fashion-mnist --seeds 0 1 2

For each seed, the peers a user tries first, on the scaled rows: "k-means" (scikit-learn KMeans, n_init=10)
and "UMAP + GMM" (``dhvc_ext.manifold.umap_gmm``: umap-learn's UMAP(n_components=K, n_neighbors=20,
min_dist=0), then a full-covariance GaussianMixture); then one run of ``dhvc_ext.train.Trainer``, whose
pretrained encoder gives three more rows: "AE + k-means" (KMeans on the mean directions mu_x), "AE + vMF
mixture" (``VonMisesFisherMixture``, ``mixture_n_init`` restarts) and "N2D" (the same UMAP + GMM on mu_x:
McConville et al., ICPR 2020); after joint training, "DHVC" with both prediction rules (argmax q(c|x), the
head, and argmax p(c|mu_x), the mixture). No label is used before the scores are computed. Wall times: the
raw-row peers' own; the encoder rows include the pretraining; DHVC's is its whole run. The table (mean and standard deviation of ACC, NMI, ARI in % and of wall time over
the seeds, and per seed), the hardware, the throughput and the share of a training step spent in dhvc_ext ops
(torch.profiler) go to benchmarks/results/dhvc_<data>_<date>.md, and every per-epoch record to a .json beside it
(ignored by git).
"""
import argparse
import dataclasses
import datetime
import json
import pathlib
import platform
import sys
import time
import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans

import dhvc_ext
from dhvc_ext import cluster_start
from dhvc_ext.data import load_dataset
from dhvc_ext.manifold import umap_gmm
from dhvc_ext.metrics import clustering_scores
from dhvc_ext.mixture import VonMisesFisherMixture
from dhvc_ext.train import TrainConfig, Trainer

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
METHODS = ("k-means (scaled rows)", "UMAP + GMM (scaled rows)", "AE + k-means", "AE + vMF mixture",
           "N2D (UMAP + GMM on the AE codes)", "DHVC (head q(c|x))", "DHVC (mixture p(c|mu_x))")
#: Neighbours of the UMAP + GMM and N2D peers (N2D's and the issue's setting).
PEER_NEIGHBORS = 20


def hardware(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{cpu}, {threads} torch thread{'s' if threads != 1 else ''}, torch {torch.__version__}"


def raw_peers(dataset, config):
    """k-means and UMAP + GMM on the scaled rows: {method: scores and seconds}."""
    X = dataset.features().astype(np.float32)
    rows = {}
    t0 = time.perf_counter()
    labels = KMeans(config.n_clusters, n_init=10, random_state=config.seed).fit_predict(X)
    rows[METHODS[0]] = dict(clustering_scores(dataset.y, labels), seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    labels = umap_gmm(X, config.n_clusters, n_neighbors=PEER_NEIGHBORS, seed=config.seed).argmax(1)
    rows[METHODS[1]] = dict(clustering_scores(dataset.y, labels), seconds=time.perf_counter() - t0)
    return rows


def run_seed(dataset, config):
    """One run: the raw-row peers, pretraining, the baselines on its encoder, joint training. Returns a dict of
    rows."""
    rows = raw_peers(dataset, config)
    start = time.perf_counter()
    trainer = Trainer(config, dataset.n_features, image_shape=dataset.image_shape,
                      unit_interval=dataset.unit_interval)
    def log(t, record):
        print(f"  epoch {record['epoch']} {record['phase']}: loss {record['loss']:.3f}, "
              f"{record['samples_per_s']:.0f} samples/s", file=sys.stderr, flush=True)
        return t.epoch == config.pretrain_epochs

    trainer.fit(dataset, callback=log)
    pretrain_s = time.perf_counter() - start
    mu = trainer.encode(dataset).double().cpu().numpy()
    t0 = time.perf_counter()
    labels = KMeans(config.n_clusters, n_init=10, random_state=config.seed).fit_predict(mu)
    rows[METHODS[2]] = dict(clustering_scores(dataset.y, labels), seconds=pretrain_s + time.perf_counter() - t0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vmfmm = VonMisesFisherMixture(config.n_clusters, n_init=config.mixture_n_init, max_iter=200,
                                      random_state=config.seed).fit(mu)
    rows[METHODS[3]] = dict(clustering_scores(dataset.y, vmfmm.predict(mu)),
                            seconds=pretrain_s + time.perf_counter() - t0)
    t0 = time.perf_counter()
    labels = umap_gmm(mu, config.n_clusters, n_neighbors=PEER_NEIGHBORS, seed=config.seed).argmax(1)
    rows[METHODS[4]] = dict(clustering_scores(dataset.y, labels), seconds=pretrain_s + time.perf_counter() - t0)
    start = time.perf_counter() - pretrain_s  # DHVC's wall time leaves out the peers' time after pretraining
    trainer.fit(dataset, callback=log)
    seconds = time.perf_counter() - start
    for method, which in zip(METHODS[5:], ("head", "mixture")):
        rows[method] = dict(clustering_scores(dataset.y, trainer.predict(dataset, which)), seconds=seconds)
    joint = [r["samples_per_s"] for r in trainer.history if r["phase"] == "joint"]
    pre = [r["samples_per_s"] for r in trainer.history if r["phase"] == "pretrain"]
    throughput = dict(joint=float(np.median(joint)) if joint else None,
                      pretrain=float(np.median(pre)) if pre else None)
    start = cluster_start.start_kept(trainer)
    return dict(rows=rows, throughput=throughput, history=trainer.history, start=start), trainer


def op_share(trainer, dataset, steps=20):
    """Share of the self time of ``steps`` joint training steps (``Trainer.step``, with the neighbour targets
    as in training) spent in dhvc_ext ops (torch.profiler)."""
    import itertools

    from torch.profiler import ProfilerActivity, profile

    batches = list(itertools.islice(trainer.training_batches(dataset, "joint"), steps))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for x, targets in batches:
            trainer.step(x, "joint", targets)
    attr = "self_device_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, attr) for e in events)
    ours = {e.key: getattr(e, attr) for e in events if e.key.startswith("dhvc_ext::")}
    return dict(share=sum(ours.values()) / total, per_op={k: v / total for k, v in sorted(ours.items())})


def seed_job(data, data_dir, scaling, subset, threads, config, with_share):
    """One seed in its own process (``--jobs``): the run's result, and the op share when asked."""
    torch.set_num_threads(threads)
    dataset = load_dataset(data, data_dir=data_dir, scaling=scaling)
    if subset:
        dataset = dataset.subset(subset, seed=0)
    result, trainer = run_seed(dataset, config)
    return result, op_share(trainer, dataset) if with_share else None, hardware(trainer.device)


def fmt(values, scale=100.0, digits=1):
    values = np.asarray(values, dtype=float) * scale
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.{digits}f}"


def per_seed_table(per_seed):
    """Markdown lines: ACC / NMI / ARI (%) of every method for every seed."""
    lines = ["Per seed (ACC / NMI / ARI, %):", "", "| method | " + " | ".join(f"seed {s['seed']}" for s in per_seed)
             + " |", "|---|" + "---|" * len(per_seed)]
    for method in METHODS:
        cells = [" / ".join(f"{100 * s['rows'][method][k]:.1f}" for k in ("acc", "nmi", "ari")) for s in per_seed]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("| DHVC start kept (final objective of each start) | " + " | ".join(
        s["start"]["chosen"] + "".join(f"; {k} {v:.3f}" for k, v in s["start"]["objectives"].items())
        for s in per_seed) + " |")
    return lines + [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", help="digits, fashion-mnist or a file path")
    parser.add_argument("--data-dir", default=None, help="directory of the Fashion-MNIST idx files")
    parser.add_argument("--scaling", default="minmax", choices=("minmax", "standard"),
                        help="feature scaling (standard: per-feature z-scores, for tabular data)")
    parser.add_argument("--subset", type=int, default=None,
                        help="use this many rows, drawn once (seed 0, no label used), the same for every seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (per seed)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run at once, each in its own process with --threads threads (CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="results .md (default: benchmarks/results/)")
    for field in dataclasses.fields(TrainConfig):
        if field.type in (bool, "bool") and field.name not in ("seed", "device", "num_threads"):
            parser.add_argument("--" + field.name.replace("_", "-"), action=argparse.BooleanOptionalAction,
                                default=field.default)
            continue
        if field.name in ("seed", "device", "num_threads") or field.type not in (int, float, str, "int", "float", "str"):
            continue
        kind = field.type if field.default is None else type(field.default)
        # n_clusters defaults to the number of classes of the data (below), not to TrainConfig's 10
        default = None if field.name == "n_clusters" else field.default
        parser.add_argument("--" + field.name.replace("_", "-"), type=kind, default=default)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data, data_dir=args.data_dir, scaling=args.scaling)
    if args.subset:
        dataset = dataset.subset(args.subset, seed=0)
    if dataset.y is None:
        parser.error(f"{args.data} has no labels: the table needs them")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    for name in ("seed", "device", "num_threads"):
        overrides.pop(name, None)
    overrides["n_clusters"] = overrides.get("n_clusters") or int(np.unique(dataset.y).size)
    configs = [TrainConfig(**overrides, seed=seed, device=args.device) for seed in args.seeds]
    if args.jobs > 1:
        import concurrent.futures
        import multiprocessing
        pool = concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
        with pool:
            jobs = [pool.submit(seed_job, args.data, args.data_dir, args.scaling, args.subset, args.threads, c, i == 0)
                    for i, c in enumerate(configs)]
            done = [job.result() for job in jobs]
        results, share, hw = [r for r, _, _ in done], done[0][1], done[0][2]
    else:
        results = []
        for config in configs:
            result, trainer = run_seed(dataset, config)
            results.append(result)
        share, hw = op_share(trainer, dataset), hardware(trainer.device)
    per_seed = []
    for seed, result in zip(args.seeds, results):
        per_seed.append(dict(seed=seed, **result))
        print(f"seed {seed}: " + "; ".join(f"{m}: acc {r['acc']:.3f} nmi {r['nmi']:.3f} ari {r['ari']:.3f} "
                                           f"{r['seconds']:.0f} s" for m, r in result["rows"].items()), flush=True)
    config = dataclasses.asdict(TrainConfig(**overrides, seed=args.seeds[0], device=args.device))
    date = datetime.date.today().isoformat()
    out = args.out or RESULTS / f"dhvc_{pathlib.Path(args.data).stem}_{date}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# DHVC on {args.data}{' (subset)' if args.subset else ''} ({len(dataset)} samples, {dataset.n_features} features, "
        f"{config['n_clusters']} clusters), {date}",
        "",
        f"Command: `python benchmarks/dhvc_results.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"Hardware: {hw}{f', {args.jobs} seeds at a time' if args.jobs > 1 else ''}; dhvc_ext {dhvc_ext.__version__}.",
        f"Seeds: {args.seeds}. Mean ± standard deviation over the seeds; ACC, NMI, ARI in %. Wall time: the whole "
        "run up to that row (pretraining included).",
        "",
        "| method | ACC | NMI | ARI | wall time (s) |",
        "|---|---|---|---|---|",
    ]
    for method in METHODS:
        rows = [s["rows"][method] for s in per_seed]
        lines.append(f"| {method} | {fmt([r['acc'] for r in rows])} | {fmt([r['nmi'] for r in rows])} | "
                     f"{fmt([r['ari'] for r in rows])} | {fmt([r['seconds'] for r in rows], 1.0, 0)} |")
    joint = [s["throughput"]["joint"] for s in per_seed if s["throughput"]["joint"]]
    pre = [s["throughput"]["pretrain"] for s in per_seed if s["throughput"]["pretrain"]]
    lines += [
        "",
        f"Throughput (training samples/s, median epoch, mean over seeds): pretraining "
        f"{np.mean(pre):.0f}, joint training {np.mean(joint):.0f}." if pre and joint else "",
        f"Share of a joint training step (forward + backward + Adam) in dhvc_ext ops (torch.profiler, self time): "
        f"{100 * share['share']:.1f}% ("
        + ", ".join(f"{k.split('::')[1]} {100 * v:.1f}%" for k, v in share["per_op"].items()) + ").",
        "",
        "Configuration: `" + json.dumps({k: v for k, v in config.items() if k != "seed"}) + "`",
        "",
    ]
    lines += per_seed_table(per_seed)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(dict(config=config, per_seed=per_seed, op_share=share),
                                                   indent=1, default=str))
    print("\n".join(lines))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
