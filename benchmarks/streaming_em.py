"""EM fit of a vMF mixture on synthetic points streamed from a memory-mapped .npy file, with peak memory.

    python benchmarks/streaming_em.py --n 10000000 --d 64 --k 100            # issue 7's size (2.56e9 bytes)
    python benchmarks/streaming_em.py --n 1000000 --iters 10 --threads 1     # what fits a busy 2-core machine

Writes N points in d dimensions from K well-separated vMF components to a float32 .npy file chunk by chunk
(the data never exist whole in memory), then fits ``VonMisesFisherMixture(K)`` to ``np.load(path,
mmap_mode="r")``: one pass to count and check the rows, one to draw the ``init_size`` start sample (when
N is larger), one hard-label M-step pass, then one pass of the fused ``vmfmm_em_statistics`` op per EM
iteration (``--iters`` of them, tol 0, so that every size runs the same count).

Memory, three ways: ``ru_maxrss`` (peak resident set; counts the memory map's file pages that the kernel
holds in the page cache and may drop at any time), the peak of the anonymous resident memory RssAnon
(sampled every 5 ms from /proc/self/status: the process's own allocations, the figure to compare with the
data size; with ``--in-memory`` it includes the array read whole), and both before the fit. Prints a Markdown table row and appends it to ``--results`` if given.
"""
import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def rss_anon_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class PeakAnon:
    """Samples RssAnon in a thread; ``peak`` is the largest value seen (kB)."""

    def __init__(self, every_s=0.005):
        self.every_s, self.peak, self._stop = every_s, rss_anon_kb(), threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_kb())
            time.sleep(self.every_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_kb())


def write_points(path, n, d, k, chunk, seed):
    """N unit rows from K vMF components (means spread at random, kappa 50..500) into a float32 .npy."""
    from dhvc_ext.ops import vmf_sample

    g = torch.Generator().manual_seed(seed)
    mu = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    kappa = torch.empty(k).uniform_(50.0, 500.0, generator=g)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        labels = torch.randint(k, (stop - start,), generator=g)
        out[start:stop] = vmf_sample(mu[labels], kappa[labels], generator=g).numpy()
    out.flush()
    del out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--iters", type=int, default=10, help="EM iterations (tol 0: all of them run)")
    p.add_argument("--chunk", type=int, default=65536, help="rows per chunk read from the memory map")
    p.add_argument("--init-size", type=int, default=65536)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="compute dtype")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dir", default=None, help="where to write the .npy (default: a temporary directory)")
    p.add_argument("--results", default=None, help="append the Markdown row to this file")
    p.add_argument("--in-memory", action="store_true",
                   help="for comparison: read the whole file into memory first and fit the in-memory array")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from dhvc_ext.mixture import VonMisesFisherMixture

    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    path = Path(tmp.name) / "points.npy"
    t0 = time.perf_counter()
    write_points(path, args.n, args.d, args.k, args.chunk, seed=0)
    t_write = time.perf_counter() - t0
    X = np.load(path, mmap_mode="r")
    if args.in_memory:
        X = np.array(X)  # counted in the peak: the data are part of what the in-memory fit needs
        os.remove(path)
    before_anon, before_max = rss_anon_kb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.in_memory:
        before_anon -= X.nbytes // 1024
    est = VonMisesFisherMixture(args.k, n_init=1, max_iter=args.iters, tol=0.0, random_state=0,
                                dtype=getattr(torch, args.dtype), chunk_size=args.chunk, init_size=args.init_size)
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    with PeakAnon() as peak, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol 0: a fixed number of iterations
        t0 = time.perf_counter()
        est.fit(X)
        t_fit = time.perf_counter() - t0
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # count/check, [sample], init M-step, iterations; in memory: k-means++ on all rows, init, iterations
    passes = est.n_iter_ + 1 if args.in_memory else est.n_iter_ + 2 + (args.n > args.init_size)
    data_mb = args.n * args.d * 4 / 2**20
    row = (f"| {args.n:.0e}, {args.d}, {args.k} | {'in memory' if args.in_memory else 'memmap'} | {args.dtype} | {args.threads} | {args.chunk} | {est.n_iter_} | "
           f"{t_write:.1f} | {t_fit:.1f} | {t_fit / passes:.2f} | {args.n * passes / t_fit / 1e6:.2f} | "
           f"{data_mb:.0f} | {peak.peak / 1024:.0f} ({(peak.peak - before_anon) / 1024:+.0f}) | {max_rss / 1024:.0f} | "
           f"{est.lower_bound_:.6f} |")
    header = ("| N, d, K | data | compute | threads | chunk rows | EM iters | write s | fit s | s per pass | "
              "M rows/s | data MB (float32) | peak anon RSS MB (over the start) | ru_maxrss MB | mean loglik |\n"
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(header)
    print(row)
    print(f"(anonymous RSS before the fit {before_anon / 1024:.0f} MB, ru_maxrss before {before_max / 1024:.0f} MB;"
          f" load average {os.getloadavg()[0]:.1f})")
    if args.results:
        with open(args.results, "a") as f:
            f.write(row + f" load {os.getloadavg()[0]:.1f}\n")


if __name__ == "__main__":
    main()
