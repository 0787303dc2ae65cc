"""Nearest neighbours (cosine) and the neighbour targets of DHVC's neighbour term.

Shapes: x (N, D) rows (inputs or latent means); index (N, k) int64 row numbers; q (N, K) cluster probabilities.

The neighbour term (``TrainConfig.neighbors``, weight ``LossWeights.gamma``) is our addition to the
reconstructed objective, not part of METHOD.md: the cross-entropy between each row's q(c|x_i) and a target
built from its k nearest neighbours,

    m_i = (1/k) sum_{j in N(i)} q(.|x_j)          (neighbours agree: SCAN, Van Gansbeke et al. 2020)
    t_ic = (m_ic^2 / f_c) / sum_c' (m_ic'^2 / f_c'),   f_c = sum_i m_ic   (DEC's sharpened target, Xie et al. 2016)

Why: nearest neighbours share the class far more often than a clustering of the same space gets right
(digits, k = 10: 96.3% of the input rows' neighbours, 93-94% of the pretrained latent means' neighbours, against
80-88% ACC for k-means on those means), and the term carries that local structure into the assignments.
N(i) is found once, when the joint phase starts, among the scaled input rows (default) or the pretrained
encoder's means; the targets are recomputed from the current network at the start of every joint epoch (no
gradient flows through them).

At scale. The exact search is O(N^2 D): 6.4 s for 20000 Fashion-MNIST rows (D = 784) on one thread, 71 s
for 70000, about 4 hours at 1e6. Above ``KNN_FAISS_ABOVE`` rows (on the CPU) ``knn_indices`` searches
approximately with faiss (``pip install faiss-cpu``), in about O(N log N) time and O(N) memory:

1. Search space: cosine similarity is a function of the chord distance |u_i - u_j| of the unit rows u, so
   L2 distances among unit rows give the cosine order. For D > FAISS_PCA_DIM = 128 the centred unit rows are
   projected on their 128 leading principal axes (fitted on 65536 rows drawn with a fixed seed): the index of
   1e6 rows then holds 0.5 GB instead of 3.1 GB, and its distances cost 6x less. PCA alone loses neighbours
   (recall@10 0.78 on 20000 Fashion-MNIST rows at 128 dims, 0.66 at 64), which step 3 wins back.
2. Index: HNSW (Malkov & Yashunin 2018; faiss ``IndexHNSWFlat``, L2), M = 16 links per row (faiss's
   default; 32 built 1.7x and searched 1.5x slower), efConstruction = 40 (faiss's default), built on one
   thread: a threaded build links rows in a scheduling-dependent order, and the result must be the same for
   the same input. Search: c = 4k candidates per row with efSearch = max(64, c), on torch's thread count
   (queries are independent: any count gives the same result).
3. Re-ranking: the c candidates are ordered by their exact float32 cosine similarity in the original D
   dimensions and the best k kept, itself removed by position.

Measured (k = 10, one thread, benchmarks/results/neighbors_cpu_2026-12-03.md): recall@10 against the exact
search 0.990 on 20000 Fashion-MNIST rows (2.9 s, 2.2x faster than exact), 0.981 on 70000 (12 s, 5.9x),
0.966 on 1e6 synthetic rows (316 s, about 46x). Recall falls slowly with N at fixed parameters; more
candidates (FAISS_CANDIDATES) or a wider search (HNSW_EF_SEARCH) buy it back at some cost. The search is
only as good as the PCA's assumption that neighbourhoods live in a few hundred directions, as images do.
On CUDA ``method="auto"`` keeps the exact blocked search on the device (faiss-cpu would copy every row to
the host); ``method="faiss"`` searches on the CPU and returns the result on x's device.
"""
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["knn_indices", "neighbor_targets"]

#: Upper bound on the entries of one (block, N) similarity matrix in ``knn_indices`` (64 MB in float32).
KNN_BLOCK_ENTRIES = 1 << 24
#: method="auto" searches approximately (faiss) above this many rows on the CPU; see "At scale" above.
KNN_FAISS_ABOVE = 20_000
#: The approximate search: rows projected to FAISS_PCA_DIM principal axes (when D is larger; fitted on
#: FAISS_PCA_SAMPLE rows), an HNSW graph of HNSW_M links per row built with HNSW_EF_CONSTRUCTION, searched
#: with max(HNSW_EF_SEARCH, c) for c = FAISS_CANDIDATES * k candidates, which are then re-ranked exactly.
FAISS_PCA_DIM, FAISS_PCA_SAMPLE = 128, 65536
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, FAISS_CANDIDATES = 16, 40, 64, 4
_METHODS = ("auto", "exact", "faiss")


@torch.no_grad()
def knn_indices(x, k, *, start=0, stop=None, block=None, method="auto"):
    """(stop - start, k) int64: for each row i in start..stop-1 of x (N, D), the k rows of x with the largest
    cosine similarity to it, itself excluded (by position: a duplicate row is a neighbour), most similar first.
    Needs 1 <= k < N.

    ``x``: a tensor, or an array-like of float32 NumPy rows read where indexed (``x[lo:hi]``, ``x[int array]``,
    ``x.shape``; a NumPy array or memory map, or ``dhvc_ext.data.Dataset.rows()``). The approximate search
    reads such rows block by block and never holds all of them (at 1e6 x 784 the rows are 3.1 GB as float32);
    the exact search reads them into one float32 tensor first. The result is on x's device (the CPU for an
    array-like).

    ``method``: "exact" searches every row (one (block, N) matrix product per block of query rows on x's
    device, O((stop - start) N D) work, at most ``KNN_BLOCK_ENTRIES`` similarities in memory, ``block`` rows
    per product when given; ties broken by torch.topk); "faiss" searches an approximate index of all N rows
    (``_knn_faiss``: HNSW, recall@10 >= 0.95 against exact, O(N log N), no N x N); "auto" (what training
    uses) takes faiss when x is on the CPU and N > ``KNN_FAISS_ABOVE``, else exact. A rank's block
    start..stop is searched in an index of every row, so blocks equal the slices of the whole result."""
    if method not in _METHODS:
        raise ValueError(f"knn_indices: method must be one of {_METHODS}, got {method!r}")
    if len(x.shape) != 2:
        raise ValueError(f"knn_indices: x must be (N, D), got shape {tuple(x.shape)}")
    n = x.shape[0]
    stop = n if stop is None else stop
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"knn_indices: k must be an int with 1 <= k < N = {n}, got {k!r}")
    if not 0 <= start <= stop <= n:
        raise ValueError(f"knn_indices: need 0 <= start <= stop <= N = {n}, got start={start}, stop={stop}")
    rows = _Rows(x)
    if method == "faiss" or (method == "auto" and rows.device.type == "cpu" and n > KNN_FAISS_ABOVE):
        return _knn_faiss(rows, k, start, stop)  # checks every row is finite as it reads it
    x = rows.all()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(_NOT_FINITE)
    x = F.normalize(x.float(), dim=1)
    block = block or max(1, min(4096, KNN_BLOCK_ENTRIES // n))
    out = torch.empty((stop - start, k), dtype=torch.int64, device=x.device)
    for lo in range(start, stop, block):
        hi = min(stop, lo + block)
        sim = x[lo:hi] @ x.T  # (b, N)
        # itself is excluded by position, not by value: duplicate rows are each other's neighbours
        sim[torch.arange(hi - lo, device=x.device), torch.arange(lo, hi, device=x.device)] = -float("inf")
        out[lo - start:hi - start] = sim.topk(k, dim=1).indices
    return out


_NOT_FINITE = "knn_indices: x has NaN or inf entries"


class _Rows:
    """Block reads of knn_indices' x: a tensor, or an array-like of float32 NumPy rows (see knn_indices)."""

    def __init__(self, x):
        self.x, self.is_tensor = x, isinstance(x, torch.Tensor)
        self.shape = tuple(x.shape)
        self.device = x.device if self.is_tensor else torch.device("cpu")
        self.dtype = x.dtype if self.is_tensor else torch.float32

    def __len__(self):
        return self.shape[0]

    def all(self):
        """Every row as one tensor (the exact search)."""
        if self.is_tensor:
            return self.x
        out = torch.empty(self.shape, dtype=torch.float32)
        for lo, hi in _row_blocks(*self.shape):
            out[lo:hi] = self.block(lo, hi)
        return out

    def block(self, lo, hi):
        """Rows lo..hi-1 (hi - lo, D), checked finite."""
        rows = self.x[lo:hi] if self.is_tensor else torch.from_numpy(np.asarray(self.x[lo:hi], dtype=np.float32))
        if not bool(torch.isfinite(rows).all()):
            raise ValueError(_NOT_FINITE)
        return rows

    def take(self, index, out=None):
        """Rows ``index`` (int64 tensor (B,)), written into ``out`` (at least B rows) when given."""
        if self.is_tensor:
            return self.x[index] if out is None else torch.index_select(self.x, 0, index, out=out[:len(index)])
        if out is not None and hasattr(self.x, "take"):  # e.g. ScaledRows.take: no temporaries
            self.x.take(index.numpy(), out=out.numpy())
            return out[:len(index)]
        rows = torch.from_numpy(np.asarray(self.x[index.numpy()], dtype=np.float32))
        return rows if out is None else out[:len(index)].copy_(rows)


def _exact_rows(x, rows, k):
    """(len(rows), k): the exact search for a few rows ``rows`` (int64) of x (``_Rows``), read block by block."""
    u = F.normalize(x.take(rows).float(), dim=1)
    sim = torch.cat([u @ F.normalize(x.block(lo, hi).float(), dim=1).T for lo, hi in _row_blocks(*x.shape)], 1)
    sim[torch.arange(len(rows), device=x.device), rows] = -float("inf")
    return sim.topk(k, dim=1).indices


def _import_faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("knn_indices: the approximate neighbour search (method='faiss', or 'auto' above "
                          f"KNN_FAISS_ABOVE = {KNN_FAISS_ABOVE} rows on the CPU) needs faiss: "
                          "pip install faiss-cpu (make installs it); or pass method='exact'") from exc
    return faiss


def _row_blocks(n, width, entries=None):
    """(lo, hi) blocks of n rows of ``width`` entries, at most ``entries`` (KNN_BLOCK_ENTRIES) per block."""
    size = max(1, min(65536, (entries or KNN_BLOCK_ENTRIES) // max(1, width)))
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def _search_space(x):
    """A function (lo, hi) -> (hi - lo, p) float32 NumPy rows whose L2 distances approximate the chord
    distances |u_i - u_j| of the unit rows u = x / |x|, computed from x block by block (no normalised copy of
    x): u itself when D <= FAISS_PCA_DIM, else u - mean projected on the FAISS_PCA_DIM leading principal axes
    of the unit rows, estimated from FAISS_PCA_SAMPLE rows drawn with a fixed seed (centred: distances do not
    change under a shift, and the principal axes of the centred rows are the ones that keep most of them)."""
    n, dim = x.shape
    mean = axes = None
    if dim > FAISS_PCA_DIM:
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:FAISS_PCA_SAMPLE].sort().values
        total = torch.zeros(dim, dtype=torch.float64, device=x.device)
        gram = torch.zeros((dim, dim), dtype=torch.float64, device=x.device)
        for lo, hi in _row_blocks(len(rows), dim, entries=KNN_BLOCK_ENTRIES // 4):  # float64: 32 MB at most
            u = F.normalize(x.take(rows[lo:hi].to(x.device)).double(), dim=1)
            total += u.sum(dim=0)
            gram += u.T @ u
        mean = total / len(rows)
        # unit rows: the covariance's entries are O(1), the subtraction loses nothing that matters in float64
        _, vectors = torch.linalg.eigh(gram / len(rows) - torch.outer(mean, mean))  # ascending eigenvalues
        mean, axes = mean.float(), vectors[:, -FAISS_PCA_DIM:].float()  # (D,), (D, p)

    def project(lo, hi):
        u = F.normalize(x.block(lo, hi).float(), dim=1)
        if axes is not None:
            u = (u - mean) @ axes
        return np.ascontiguousarray(u.cpu().numpy(), dtype=np.float32)

    return project, min(dim, FAISS_PCA_DIM)


def _knn_faiss(x, k, start, stop):
    """The approximate search of ``knn_indices``; the module docstring's "At scale" gives the method and why
    its parameters are what they are. Memory: the index (N x min(D, 128) float32 and about 150 bytes of links
    per row) and blocks of at most 65536 rows; no N x N, no copy of x. ``x``: a ``_Rows``."""
    faiss = _import_faiss()
    n, dim = x.shape
    candidates = min(n, max(FAISS_CANDIDATES * k, k + 1))  # itself among them
    # first: this pass checks that every row is finite before the PCA sees any
    inv_norm = torch.cat([torch.linalg.vector_norm(x.block(lo, hi).float(), dim=1)
                          for lo, hi in _row_blocks(n, dim)]).clamp_min(1e-12).reciprocal()
    project, p = _search_space(x)
    index = faiss.IndexHNSWFlat(p, HNSW_M, faiss.METRIC_L2)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, candidates)
    out = torch.empty((stop - start, k), dtype=torch.int64, device=x.device)
    threads_before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)  # a threaded build links rows in a scheduling-dependent order
        for lo, hi in _row_blocks(n, dim):
            index.add(project(lo, hi))
        # queries are independent of each other: any number of threads gives the same result
        faiss.omp_set_num_threads(torch.get_num_threads())
        blocks = _row_blocks(stop - start, candidates * dim)
        buffer = torch.empty((candidates * (blocks[0][1] if blocks else 0), dim), dtype=x.dtype, device=x.device)
        for lo, hi in blocks:
            lo, hi = lo + start, hi + start
            _, found = index.search(project(lo, hi), candidates)
            out[lo - start:hi - start] = _rerank(x, inv_norm, torch.from_numpy(found).to(x.device), lo, k, buffer)
    finally:
        faiss.omp_set_num_threads(threads_before)
    return out


def _rerank(x, inv_norm, found, lo, k, buffer):
    """(b, k): the candidates found (b, c) for the rows lo..lo+b-1 of x (-1: none), ordered by their exact
    cosine similarity in float32 (inv_norm (N,): 1 / |x_i|), itself removed. ``buffer``: at least b c rows of
    x's dtype, reused from block to block (a fresh gather of this size each block costs 3x more, in page
    faults). A row left with fewer than k candidates (not seen here: HNSW returns c rows when N >= c) is
    searched exactly."""
    b, c = found.shape
    rows = torch.arange(lo, lo + b, device=x.device)
    safe = found.clamp_min(0)
    cand = x.take(safe.reshape(-1), out=buffer).view(b, c, -1)
    sim = torch.bmm(cand.float(), x.block(lo, lo + b).float()[:, :, None]).squeeze(2)  # (b, c)
    sim *= inv_norm[safe] * inv_norm[lo:lo + b, None]
    sim[(found < 0) | (found == rows[:, None])] = -float("inf")
    best = sim.topk(k, dim=1)
    out = found.gather(1, best.indices)
    short = ~torch.isfinite(best.values[:, -1])
    if bool(short.any()):
        out[short] = _exact_rows(x, rows[short], k)
    return out


@torch.no_grad()
def neighbor_targets(q, index):
    """(N, K) targets t of the module docstring from cluster probabilities q (N, K) and neighbours index (N, k):
    the neighbours' mean probabilities, sharpened as DEC's target distribution (squared, divided by the
    cluster's total, rows renormalised). Rows of t sum to 1; a cluster no row's neighbours support (f_c = 0)
    gets t = 0."""
    if q.dim() != 2 or index.dim() != 2 or index.shape[0] != q.shape[0]:
        raise ValueError(f"neighbor_targets: q (N, K) and index (N, k) must have the same N, got shapes "
                         f"{tuple(q.shape)} and {tuple(index.shape)}")
    m = q[index].mean(dim=1)  # (N, K)
    f = m.sum(dim=0)  # (K,)
    t = m.square() / f.clamp_min(torch.finfo(m.dtype).tiny)
    return t / t.sum(dim=1, keepdim=True)
