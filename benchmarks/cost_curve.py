"""The cost curve of DHVC training on the CPU (issue 14, item 4): seconds per phase and peak memory at N rows.

Data: a mixture of K = 10 von Mises-Fisher components on S^9 (concentrations 20..60) pushed through a fixed
random network (10 -> 256 tanh -> 784 sigmoid) and stored as uint8 pixels, D = 784, in an ``.npy`` file that
training memory-maps (``dhvc_ext.data.load_dataset``, as ``dhvc train --data X.npy`` does). Training:
``dhvc_ext.train.Trainer`` with the defaults of ``TrainConfig`` (the 500-500-2000 MLP, batch 256, the
neighbour term on: k = 10 among the input rows; the joint phase from each start of cluster_init="best")
but 1 pretraining epoch and 1 joint epoch per start, on the CPU.

Phases, timed by wrapping the trainer's own methods (what ``fit`` calls): the pretraining epoch
(``_run_epoch``), the mixture fit (``init_mixture`` less the neighbour search and the manifold start inside
it; once per start), the manifold start (``cluster_start.manifold_start``: UMAP + GMM runs on 20000 landmark
rows, then every row's nearest landmarks), the neighbour search (``find_neighbors``: ``knn_indices`` reading
the rows from the memory map block by block), the neighbour targets (``update_targets``: every row encoded;
once per start), the joint epochs (one per start) and the start objective (``evaluate_loss`` of each start's
network on all rows, by which the network is kept). Memory: the process's peak resident set
(VmHWM; it counts the pages of the memory-mapped file that were read) and, sampled every 0.1 s, the peak of
its anonymous memory (RssAnon: what the process allocated, beyond the file's pages), overall and per phase.
The neighbour search's recall@10 is measured on its first 1000 rows against the exact search of those rows.

``--init-only`` N: skip both epochs at that N (the network stays as initialised) and time the mixture fit
and the neighbour search alone; an epoch's cost is linear in N (a fixed cost per batch of 256 rows), so the
epochs at N are then extrapolated from the largest N trained in full, and the table says so.

Usage (one thread, as the figures in benchmarks/results/cost_curve_cpu_*.md):

    OMP_NUM_THREADS=1 python benchmarks/cost_curve.py --n 10000 100000 [--init-only 1000000]

Files: the data under --data-dir (default build/cost_curve; 784 MB at 1e6 rows, reused when present), the
table written to --results (default benchmarks/results/cost_curve_cpu_<date>.md) and printed.
"""
import argparse
import contextlib
import datetime
import os
import pathlib
import platform
import sys
import threading
import time
import warnings

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIM, LATENT, CLUSTERS, HIDDEN = 784, 10, 10, 256
CHUNK = 65536


def synthetic_rows(n, seed=0, chunk=CHUNK):
    """Yield (rows (b, 784) uint8, labels (b,) int64) chunks of the data set of the module docstring, n rows
    in all. Chunk c is drawn from its own seed, so the same n and seed give the same file whatever reads it."""
    from dhvc_ext import ops

    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(CLUSTERS, LATENT, generator=g), dim=1)
    kappa = 20 + 40 * torch.rand(CLUSTERS, generator=g)
    w1 = torch.randn(LATENT, HIDDEN, generator=g) * 2.0
    w2 = torch.randn(HIDDEN, DIM, generator=g) * (3.0 / HIDDEN ** 0.5)
    for c, lo in enumerate(range(0, n, chunk)):
        gc = torch.Generator().manual_seed(seed * 1_000_003 + c + 1)
        labels = torch.randint(CLUSTERS, (min(chunk, n - lo),), generator=gc)
        z = ops.vmf_sample(centres[labels], kappa[labels], generator=gc)
        pixels = torch.sigmoid(torch.tanh(z @ w1) @ w2)
        yield (pixels * 255).round().to(torch.uint8).numpy(), labels.numpy()


def write_data(path, n, seed=0):
    """Write the n rows to ``path`` (.npy, uint8, written through a memory map) unless a file of that shape
    is there; returns the path."""
    path = pathlib.Path(path)
    if path.exists():
        existing = np.load(path, mmap_mode="r")
        if existing.shape == (n, DIM) and existing.dtype == np.uint8:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, DIM))
    lo = 0
    for rows, _ in synthetic_rows(n, seed):
        out[lo:lo + len(rows)] = rows
        lo += len(rows)
    out.flush()
    del out
    return path


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class MemorySampler:
    """Peak RssAnon (kB) of this process, sampled every ``interval`` s in a thread, per named phase."""

    def __init__(self, interval=0.1):
        self.interval, self.peak, self.phase_peak, self.phase = interval, 0, {}, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        anon = _status_kb("RssAnon")
        self.peak = max(self.peak, anon)
        if self.phase is not None:
            self.phase_peak[self.phase] = max(self.phase_peak.get(self.phase, 0), anon)

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def within(self, name):
        outer, self.phase = self.phase, name
        self._sample()
        try:
            yield
        finally:
            self._sample()
            self.phase = outer


def _timed(seconds, memory, name, fn, name_of=None):
    """fn, timing each call into seconds[name] (summed over calls) under memory.within(name)."""

    def wrapper(*args, **kwargs):
        label = name_of(*args) if name_of else name
        start = time.perf_counter()
        with memory.within(label):
            out = fn(*args, **kwargs)
        seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - start
        return out

    return wrapper


def measure(n, data_dir, init_only=False, recall_rows=1000, cluster_init=None):
    """One run at n rows; returns a dict of the figures."""
    from dhvc_ext import cluster_start, neighbors
    from dhvc_ext.data import load_dataset
    from dhvc_ext.train import Trainer, TrainConfig

    path = write_data(pathlib.Path(data_dir) / f"synthetic_{n}.npy", n)
    seconds = {}
    with MemorySampler() as memory:
        rss_start = _status_kb("VmRSS")
        anon_start = _status_kb("RssAnon")
        dataset = load_dataset(str(path))
        extra = {} if cluster_init is None else dict(cluster_init=cluster_init)
        config = TrainConfig(n_clusters=CLUSTERS, pretrain_epochs=1, epochs=1, device="cpu", num_threads=1, seed=0,
                             **extra)
        trainer = Trainer(config, dataset.n_features, unit_interval=dataset.unit_interval)
        trainer._run_epoch = _timed(seconds, memory, None, trainer._run_epoch,
                                    name_of=lambda ds, phase, *a: f"{phase} epoch")
        search = _timed(seconds, memory, "neighbour search", trainer.find_neighbors)
        trainer.find_neighbors = search
        trainer.init_mixture = _timed(seconds, memory, "mixture fit + search", trainer.init_mixture)
        trainer.update_targets = _timed(seconds, memory, "neighbour targets", trainer.update_targets)
        trainer.evaluate_loss = _timed(seconds, memory, "start objective", trainer.evaluate_loss)
        manifold_start = cluster_start.manifold_start
        cluster_start.manifold_start = _timed(seconds, memory, "manifold start", manifold_start)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exact-search cost warning of Trainer.fit
            try:
                if init_only:
                    trainer.init_mixture(dataset)
                else:
                    trainer.fit(dataset)
            finally:
                cluster_start.manifold_start = manifold_start
        total = time.perf_counter() - start
        seconds["mixture fit"] = (seconds.pop("mixture fit + search") - seconds["neighbour search"]
                                  - seconds.get("manifold start", 0.0))
        peak_rss, peak_anon = _status_kb("VmHWM"), memory.peak
        # recall@10 of the search on its first rows, against the exact search of those rows among all N
        k = trainer.neighbor_index.shape[1]
        rows = min(recall_rows, n)
        exact = neighbors.knn_indices(dataset.rows(), k, start=0, stop=rows, method="exact")
        found = trainer.neighbor_index[:rows]
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), exact.tolist())]))
        method = "faiss HNSW" if n > neighbors.KNN_FAISS_ABOVE else "exact"
    return dict(n=n, starts=list(config.starts), seconds=seconds, total=total, peak_rss_mb=peak_rss / 1024, rss_start_mb=rss_start / 1024,
                peak_anon_mb=peak_anon / 1024, anon_start_mb=anon_start / 1024,
                phase_anon_mb={k: v / 1024 for k, v in memory.phase_peak.items()},
                recall=recall, recall_rows=rows, method=method, init_only=init_only,
                data_mb=path.stat().st_size / 2 ** 20)


PHASES = ("pretrain epoch", "mixture fit", "manifold start", "neighbour search", "neighbour targets", "joint epoch",
          "start objective")


def table(results):
    """The Markdown table of the runs; the epochs of an --init-only run extrapolated from the largest full one."""
    full = [r for r in results if not r["init_only"]]
    ref = max(full, key=lambda r: r["n"]) if full else None
    lines = ["| N | data file | " + " | ".join(PHASES) + " | total | search recall@10 | peak RSS | peak anonymous |",
             "|---:|---:|" + "---:|" * len(PHASES) + "---:|---:|---:|---:|"]
    for r in results:
        cells = []
        for phase in PHASES:
            if phase in r["seconds"]:
                cells.append(f"{r['seconds'][phase]:.1f} s")
            elif ref is not None and phase in ref["seconds"]:
                cells.append(f"*{ref['seconds'][phase] * r['n'] / ref['n']:.0f} s (extrapolated)*")
            else:
                cells.append("-")
        search = f"{r['method']}"
        lines.append(f"| {r['n']:,} | {r['data_mb']:.0f} MB | " + " | ".join(cells)
                     + f" | {r['total']:.0f} s | {r['recall']:.3f} ({search}, {r['recall_rows']} rows) | "
                     f"{r['peak_rss_mb']:.0f} MB | {r['peak_anon_mb']:.0f} MB |")
    return "\n".join(lines)


#: the mixture fit's memory is sampled with the neighbour search inside it
MEMORY_KEYS = {"mixture fit": "mixture fit + search"}


def phase_memory(results):
    lines = ["| N | " + " | ".join(MEMORY_KEYS.get(p, p) for p in PHASES) + " |", "|---:|" + "---:|" * len(PHASES)]
    for r in results:
        lines.append(f"| {r['n']:,} | " + " | ".join(
            f"{r['phase_anon_mb'][key]:.0f} MB" if key in r["phase_anon_mb"] else "-"
            for key in (MEMORY_KEYS.get(p, p) for p in PHASES)) + " |")
    return "\n".join(lines)


def _cpu_name():
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="row counts trained in full")
    parser.add_argument("--init-only", type=int, nargs="*", default=[],
                        help="row counts at which only the mixture fit and the neighbour search run")
    parser.add_argument("--cluster-init", default=None, help="TrainConfig.cluster_init (default: its default)")
    parser.add_argument("--data-dir", default=str(ROOT / "build" / "cost_curve"))
    parser.add_argument("--results", default=None, help="Markdown file to write (default: benchmarks/results/"
                        "cost_curve_cpu_<date>.md)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for n in sorted(args.n):
        results.append(measure(n, args.data_dir, cluster_init=args.cluster_init))
        print(results[-1], flush=True)
    for n in sorted(args.init_only):
        results.append(measure(n, args.data_dir, init_only=True, cluster_init=args.cluster_init))
        print(results[-1], flush=True)
    date = datetime.date.today().isoformat()
    command = "OMP_NUM_THREADS=1 python benchmarks/cost_curve.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"# DHVC cost curve on the CPU, {date}\n\n`{command}`\n\n"
            f"Machine: {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread "
            f"(torch and OpenMP); 1 pretraining epoch and 1 joint epoch from each start "
            f"({' and '.join(results[0]['starts'])}) of the TrainConfig (MLP 784-500-500-2000-10, batch 256, "
            f"neighbours k = 10 among the input rows), synthetic uint8 rows (benchmarks/cost_curve.py). A phase "
            f"run once per start (mixture fit, neighbour targets, joint epoch, start objective) is the sum over "
            f"the starts.\n\n" + table(results)
            + "\n\nPeak anonymous memory (RssAnon, sampled every 0.1 s) during each phase:\n\n" + phase_memory(results)
            + "\n")
    out = pathlib.Path(args.results or ROOT / "benchmarks" / "results" / f"cost_curve_cpu_{date}.md")
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
