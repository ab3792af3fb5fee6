"""Figures of a joint embedding (matplotlib, PNG): what retrieval returns, the similarity structure
of a batch, and where pairs lie in the shared space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from seisfuse.eval.metrics import similarity


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def retrieval_grid(path: str | Path, waveforms: np.ndarray, images: np.ndarray, sim: np.ndarray,
                   queries: Sequence[int], k: int = 4, sample_rate: float = 100.0) -> Path:
    """Rows: a waveform query (3 components) and its top-k images by similarity; the true pair is
    framed green, and its rank is in the row title.

    sim [N_waveforms, N_images] (sim[i, j]: waveform i vs image j); waveforms [N, T, 3]; images
    [N, H, W, 1].
    """
    plt = _pyplot()
    sim = np.asarray(sim)
    if sim.shape != (len(waveforms), len(images)):
        raise ValueError(f"sim must be [waveforms, images] = {(len(waveforms), len(images))}, "
                         f"got {sim.shape}")
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(2.2 * (k + 1) + 2.2, 2.2 * len(queries)),
                             gridspec_kw={"width_ratios": [2.0] + [1.0] * k}, squeeze=False)
    t = np.arange(waveforms.shape[1]) / sample_rate
    for row, q in enumerate(queries):
        order = np.argsort(-sim[q], kind="stable")
        rank = int(np.flatnonzero(order == q)[0]) + 1 if q < len(images) else None
        ax = axes[row, 0]
        w = waveforms[q] / (np.abs(waveforms[q]).max(axis=0) + 1e-12)
        for c, name in enumerate("ZNE"):
            ax.plot(t, w[:, c] - 2.2 * c, lw=0.4, color="k")
            ax.text(t[0] - 0.04 * t[-1], -2.2 * c, name, va="center", ha="right", fontsize=7)
        ax.set_yticks([])
        ax.set_title(f"waveform {q}: its image ranks {rank}", fontsize=8)
        if row == len(queries) - 1:
            ax.set_xlabel("time (s)", fontsize=8)
        for col, j in enumerate(order[:k], start=1):
            ax = axes[row, col]
            ax.imshow(images[j][..., 0], cmap="gray", vmin=-3, vmax=3, aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"#{col} image {j} ({sim[q, j]:.2f})", fontsize=8)
            if j == q:
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:green")
                    spine.set_linewidth(3)
    fig.tight_layout()
    return _save(fig, path, plt)


def similarity_matrix(path: str | Path, image_embeddings: np.ndarray, waveform_embeddings: np.ndarray,
                      title: str = "cosine similarity of held-out pairs") -> Path:
    """Heat map of image i vs waveform j; a trained model shows a bright diagonal."""
    plt = _pyplot()
    sim = similarity(image_embeddings, waveform_embeddings)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(sim, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel("waveform")
    ax.set_ylabel("image")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, plt)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Projection of x [N, D] on its first two principal axes."""
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def joint_space_map(path: str | Path, embeddings: Mapping[str, np.ndarray],
                    labels: Mapping[str, np.ndarray]) -> Path:
    """PCA of all modalities' embeddings together (one marker per modality, pairs joined by a grey
    line), one panel per physical label (e.g. {'S-P time (s)': ..., 'salt in section': ...})."""
    plt = _pyplot()
    names = list(embeddings)
    counts = {len(v) for v in embeddings.values()} | {len(v) for v in labels.values()}
    if len(counts) != 1:
        raise ValueError(f"embeddings and labels must all have one length per pair, got {sorted(counts)}")
    n = counts.pop()
    points = pca_2d(np.concatenate([embeddings[m] for m in names]))
    per = {m: points[i * n:(i + 1) * n] for i, m in enumerate(names)}
    markers = ["o", "^", "s", "D"]
    fig, axes = plt.subplots(1, len(labels), figsize=(5.0 * len(labels), 4.4), squeeze=False)
    for ax, (label, values) in zip(axes[0], labels.items(), strict=True):
        if len(names) >= 2:
            a, b = per[names[0]], per[names[1]]
            ax.plot(np.stack([a[:, 0], b[:, 0]]), np.stack([a[:, 1], b[:, 1]]), color="0.85", lw=0.4,
                    zorder=0)
        for i, m in enumerate(names):
            sc = ax.scatter(per[m][:, 0], per[m][:, 1], c=values, s=12, cmap="viridis",
                            marker=markers[i % len(markers)], label=m, edgecolors="none")
        fig.colorbar(sc, ax=ax, fraction=0.046, label=label)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=8, loc="best")
        ax.set_title(f"joint space, coloured by {label}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: str | Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path
