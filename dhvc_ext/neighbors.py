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
"""
import torch

__all__ = ["knn_indices", "neighbor_targets"]

#: Upper bound on the entries of one (block, N) similarity matrix in ``knn_indices`` (64 MB in float32).
KNN_BLOCK_ENTRIES = 1 << 24


@torch.no_grad()
def knn_indices(x, k, *, start=0, stop=None, block=None):
    """(stop - start, k) int64: for each row i in start..stop-1 of x (N, D), the k rows of x with the largest
    cosine similarity to it, itself excluded, most similar first. Exact: one (block, N) matrix product per
    block of query rows on x's device, O((stop - start) N D) work and at most ``KNN_BLOCK_ENTRIES`` similarities
    in memory (``block`` rows per product when given). Ties are broken by torch.topk. Needs 1 <= k < N."""
    if x.dim() != 2:
        raise ValueError(f"knn_indices: x must be (N, D), got shape {tuple(x.shape)}")
    n = x.shape[0]
    stop = n if stop is None else stop
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"knn_indices: k must be an int with 1 <= k < N = {n}, got {k!r}")
    if not 0 <= start <= stop <= n:
        raise ValueError(f"knn_indices: need 0 <= start <= stop <= N = {n}, got start={start}, stop={stop}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("knn_indices: x has NaN or inf entries")
    x = torch.nn.functional.normalize(x.float(), dim=1)
    block = block or max(1, min(4096, KNN_BLOCK_ENTRIES // n))
    out = torch.empty((stop - start, k), dtype=torch.int64, device=x.device)
    for lo in range(start, stop, block):
        hi = min(stop, lo + block)
        sim = x[lo:hi] @ x.T  # (b, N)
        # itself is excluded by position, not by value: duplicate rows are each other's neighbours
        sim[torch.arange(hi - lo, device=x.device), torch.arange(lo, hi, device=x.device)] = -float("inf")
        out[lo - start:hi - start] = sim.topk(k, dim=1).indices
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
