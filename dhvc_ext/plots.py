"""PNG pictures of a clustering run: loss terms and scores per epoch, the latent space, the confusion matrix,
the cluster sizes.

A leaf module: it takes NumPy arrays and history records and imports none of the model code. It draws with
matplotlib's object API (``Figure`` rendered by the Agg canvas), never ``pyplot``, so it needs no display,
changes no global backend and frees each figure when the function returns: safe on a headless server and
inside other programs.

Every function writes one PNG to ``path`` and returns the path.
"""
from pathlib import Path

import numpy as np

__all__ = ["cluster_sizes", "confusion", "latent_pca", "losses", "metrics", "pca_2d"]

#: Points drawn in a scatter plot at most (a random subset beyond that: 70k dots are a blot).
MAX_POINTS = 5000
_DPI = 110


def _figure(width, height):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _save(fig, path):
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _colours(k):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"]
    return cmap(np.arange(k) % cmap.N) if k <= 20 else cmap(np.linspace(0, 1, k))


def losses(history, path, terms):
    """One panel per loss term (``terms``, keys of the history records) against the epoch; pretraining and
    joint training in different colours, a dashed line where the joint phase starts."""
    from matplotlib.ticker import MaxNLocator

    terms = [t for t in terms if any(t in r for r in history)]
    cols = min(3, max(1, len(terms)))
    rows = -(-len(terms) // cols)
    fig = _figure(4.2 * cols, 3.0 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    epochs = np.array([r["epoch"] for r in history])
    phases = np.array([r.get("phase", "") for r in history])
    first_joint = epochs[phases == "joint"].min() if (phases == "joint").any() else None
    for ax, term in zip(axes, terms):
        values = np.array([r.get(term, np.nan) for r in history], dtype=float)
        for phase, colour in (("pretrain", "tab:gray"), ("joint", "tab:blue")):
            mask = phases == phase
            if mask.any():
                ax.plot(epochs[mask], values[mask], "o-", ms=3, color=colour, label=phase)
        if first_joint is not None and first_joint > epochs.min():
            ax.axvline(first_joint - 0.5, color="k", ls="--", lw=0.8)
        ax.set_title(term)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(terms):]:
        ax.set_visible(False)
    if len(terms):
        axes[0].legend(fontsize=8)
    fig.suptitle("training loss terms (epoch means)")
    return _save(fig, path)


def metrics(records, path, names=("acc", "nmi", "ari")):
    """Scores against the labels per epoch: ``records`` are dicts with "epoch" and some of ``names``."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(6.0, 3.6)
    ax = fig.subplots()
    for name in names:
        points = [(r["epoch"], r[name]) for r in records if r.get(name) is not None]
        if points:
            ax.plot(*zip(*points), "o-", ms=3, label=name.upper())
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.05 if any(r.get("ari", 0) and r["ari"] < 0 for r in records) else 0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("clustering scores against the labels (not used in training)")
    return _save(fig, path)


def pca_2d(X):
    """Project rows of X (n, d) on their first two principal directions; returns (n, 2) and the explained
    variance ratio of each. Directions from the d x d covariance (cheap for any n); each direction's sign
    is fixed so that its largest loading is positive, so the picture does not flip between runs."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    cov = Xc.T @ Xc / max(len(X) - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:2]
    vectors = vectors[:, order]
    vectors *= np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    total = values.sum()
    ratio = values[order] / total if total > 0 else np.zeros(len(order))
    proj = Xc @ vectors
    if proj.shape[1] < 2:  # d = 1 cannot happen on a sphere of dimension >= 1, but stay total
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
    return proj, ratio


def latent_pca(mu, clusters, path, labels=None, n_clusters=None, seed=0):
    """The latent means projected to 2-D by PCA, coloured by cluster (and, beside it, by class when
    ``labels`` are given). With ``n_clusters``, cluster c has the colour of bar c in ``cluster_sizes`` even
    when some clusters are empty. At most ``MAX_POINTS`` points are drawn (a fixed random subset)."""
    proj, ratio = pca_2d(mu)
    clusters = np.asarray(clusters)
    idx = np.arange(len(proj))
    if len(idx) > MAX_POINTS:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), MAX_POINTS, replace=False))
    panels = [("cluster", clusters)] + ([("class", np.asarray(labels))] if labels is not None else [])
    fig = _figure(5.2 * len(panels), 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False).ravel())
    for ax, (title, values) in zip(axes, panels):
        keys, coded = np.unique(values, return_inverse=True)
        colours = _colours(len(keys))
        if title == "cluster" and n_clusters is not None:  # colour by cluster id, not by rank among the used
            colours, coded = _colours(n_clusters), values.astype(np.int64)
            keys = np.arange(n_clusters)
        coded = coded.reshape(-1)
        ax.scatter(proj[idx, 0], proj[idx, 1], c=colours[coded[idx]], s=6, alpha=0.7, linewidths=0)
        if len(keys) <= 20:
            for j in np.unique(coded):
                ax.scatter([], [], color=colours[j], s=20, label=str(keys[j]))
            ax.legend(title=title, fontsize=7, markerscale=1, loc="best", ncols=2 if len(keys) > 10 else 1)
        ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}% of variance)" if len(ratio) > 1 else "PC 2")
        ax.set_title(f"latent means mu_x, coloured by {title}")
        ax.set_aspect("equal", adjustable="datalim")
    shown = f"{len(idx)} of {len(proj)} points" if len(idx) < len(proj) else f"{len(proj)} points"
    fig.suptitle(f"latent means, first two principal directions ({shown})")
    return _save(fig, path)


def confusion(y_true, y_pred, path):
    """Counts of (class, cluster) pairs; clusters are reordered so that the one matched to each class by
    the Hungarian assignment (as in the ACC score) sits on the diagonal, unmatched clusters last."""
    from dhvc_ext.metrics import matched_contingency

    classes, clusters, counts, rows, cols = matched_contingency(y_true, y_pred)  # rows come sorted
    acc = counts[rows, cols].sum() / counts.sum()
    order = list(cols) + [c for c in range(len(clusters)) if c not in set(cols)]
    counts = counts[:, order]
    fig = _figure(max(5.0, 1.8 + 0.5 * len(clusters)), max(3.5, 1.2 + 0.45 * len(classes)))
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues", aspect="auto")
    fig.colorbar(image, ax=ax, label="samples")
    if counts.size <= 900:
        threshold = counts.max() / 2
        for (i, j), value in np.ndenumerate(counts):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > threshold else "black")
    ax.set_xticks(range(len(order)), [str(clusters[c]) for c in order], fontsize=8)
    ax.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=8)
    ax.set_xlabel("cluster (in the order of the classes matched to them)")
    ax.set_ylabel("class")
    ax.set_title(f"confusion matrix (matched ACC {acc:.3f})")
    return _save(fig, path)


def cluster_sizes(y_pred, n_clusters, path):
    """Samples per cluster 0..n_clusters-1 (empty clusters shown), with the balanced size N/K dashed."""
    sizes = np.bincount(np.asarray(y_pred, dtype=np.int64), minlength=n_clusters)
    fig = _figure(max(4.0, 0.45 * len(sizes) + 1.5), 3.4)
    ax = fig.subplots()
    ax.bar(np.arange(len(sizes)), sizes, color=_colours(len(sizes)))
    ax.axhline(sizes.sum() / n_clusters, color="k", ls="--", lw=0.8, label="N / K")
    ax.set_xticks(np.arange(len(sizes)))
    ax.set_xlabel("cluster")
    ax.set_ylabel("samples")
    ax.legend()
    ax.set_title(f"cluster sizes ({int((sizes == 0).sum())} empty of {n_clusters})")
    return _save(fig, path)
