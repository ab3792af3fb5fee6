"""Figures (matplotlib, PNG): of a joint embedding (what retrieval returns, the similarity structure
of a batch, where pairs lie in the shared space) and of the downstream tasks (segmentation and
regression examples, per-class IoU, confusion matrices, picks on a record, onset residuals)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from seisfuse.data.transforms import SAMPLING_RATE
from seisfuse.eval.metrics import class_indices, similarity


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def retrieval_grid(path: str | Path, waveforms: np.ndarray, images: np.ndarray, sim: np.ndarray,
                   queries: Sequence[int], k: int = 4, sample_rate: float = SAMPLING_RATE) -> Path:
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


def _examples(images: np.ndarray, what: str) -> np.ndarray:
    """[N, H, W] from [N, H, W] or [N, H, W, 1]."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"{what} must be [N, H, W] or [N, H, W, 1], got {images.shape}")
    return images


def _amplitude_limit(images: np.ndarray) -> float:
    """Symmetric colour limit at the 99th percentile of |amplitude|, so a few spikes do not wash out
    a seismic section."""
    finite = np.abs(images[np.isfinite(images)])
    return float(np.percentile(finite, 99)) if finite.size and np.percentile(finite, 99) > 0 else 1.0


def segmentation_grid(images: np.ndarray, truths: np.ndarray, preds: np.ndarray, path: str | Path,
                      num_classes: int, max_examples: int = 6) -> Path:
    """Columns: examples; rows: seismic image, true classes, predicted classes (as SFM's notebook
    shows them), with each prediction's pixel accuracy. preds: class maps or scores with a trailing
    class axis; labels outside [0, num_classes) (ignored pixels) are left white."""
    plt = _pyplot()
    from matplotlib.colors import BoundaryNorm

    images, truths = _examples(images, "images"), _examples(truths, "truths")
    if images.shape != truths.shape:
        raise ValueError(f"images {images.shape} and truths {truths.shape} must have one [N, H, W] shape")
    preds = np.asarray(preds)
    if preds.shape == truths.shape + (1,):
        preds = preds[..., 0]
    preds = class_indices(preds, truths.shape, num_classes)
    n = min(len(images), max_examples)
    cmap = plt.get_cmap("tab20" if num_classes > 10 else "tab10").resampled(num_classes)
    norm = BoundaryNorm(np.arange(num_classes + 1) - 0.5, num_classes)
    limit = _amplitude_limit(images[:n])
    fig, axes = plt.subplots(3, n, figsize=(2.4 * n, 7.2), squeeze=False)
    for j in range(n):
        valid = (truths[j] >= 0) & (truths[j] < num_classes)
        accuracy = float(np.mean(preds[j][valid] == truths[j][valid])) if valid.any() else float("nan")
        axes[0, j].imshow(images[j], cmap="gray", vmin=-limit, vmax=limit, aspect="auto")
        axes[1, j].imshow(np.ma.masked_where(~valid, truths[j]), cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest")
        shown = axes[2, j].imshow(preds[j], cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        axes[0, j].set_title(f"example {j}", fontsize=8)
        axes[2, j].set_title(f"PA {accuracy:.3f}", fontsize=8)
    for row, name in enumerate(("image", "truth", "prediction")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=axes[1:, :].ravel().tolist(), ticks=range(num_classes), fraction=0.03,
                 label="class")
    return _save(fig, path, plt)


def regression_grid(images: np.ndarray, targets: np.ndarray, preds: np.ndarray, path: str | Path,
                    max_examples: int = 6) -> Path:
    """Columns: examples; rows: input, target, prediction (one colour scale, the targets'), and the
    error prediction - target on its own symmetric scale; each column titled with its MSE."""
    plt = _pyplot()
    images, targets, preds = (_examples(a, name) for a, name in
                              ((images, "images"), (targets, "targets"), (preds, "preds")))
    if not images.shape == targets.shape == preds.shape:
        raise ValueError(f"images {images.shape}, targets {targets.shape} and preds {preds.shape} must "
                         f"have one [N, H, W] shape")
    n = min(len(images), max_examples)
    error = preds[:n] - targets[:n]
    limit, error_limit = _amplitude_limit(targets[:n]), _amplitude_limit(error)
    fig, axes = plt.subplots(4, n, figsize=(2.4 * n, 9.4), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j], cmap="gray", vmin=-_amplitude_limit(images[j]),
                          vmax=_amplitude_limit(images[j]), aspect="auto")
        for row, data in ((1, targets[j]), (2, preds[j])):
            axes[row, j].imshow(data, cmap="gray", vmin=-limit, vmax=limit, aspect="auto")
        shown = axes[3, j].imshow(error[j], cmap="seismic", vmin=-error_limit, vmax=error_limit,
                                  aspect="auto")
        axes[0, j].set_title(f"example {j}: MSE {float(np.mean(error[j] ** 2)):.3g}", fontsize=8)
    for row, name in enumerate(("input", "target", "prediction", "error")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=axes[3, :].tolist(), fraction=0.03, label="prediction - target")
    return _save(fig, path, plt)


def _class_labels(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    return [str(name) for name in class_names]


def iou_bars(iou: np.ndarray, path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    """Per-class IoU as bars with the mIoU (nanmean) as a line; a class absent from truth and
    prediction (NaN) is marked 'absent' instead of drawn as zero."""
    plt = _pyplot()
    iou = np.asarray(iou, np.float64)
    if iou.ndim != 1 or not len(iou):
        raise ValueError(f"iou must be a non-empty per-class vector, got shape {iou.shape}")
    names = _class_labels(len(iou), class_names)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(iou) + 2), 3.6))
    x = np.arange(len(iou))
    ax.bar(x, np.nan_to_num(iou), color="tab:blue")
    for i in np.flatnonzero(np.isnan(iou)):
        ax.text(i, 0.02, "absent", rotation=90, ha="center", va="bottom", fontsize=7)
    if not np.all(np.isnan(iou)):
        miou = float(np.nanmean(iou))
        ax.axhline(miou, color="tab:red", lw=1)
        ax.set_title(f"per-class IoU; mIoU {miou:.3f} (red line)", fontsize=9)
    ax.set_xticks(x, names, rotation=45 if len(iou) > 8 else 0, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    fig.tight_layout()
    return _save(fig, path, plt)


def confusion_matrix_plot(cm: np.ndarray, path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    """Confusion matrix (rows = truth) coloured by each row's share (recall per true class), with the
    counts written in the cells when there are at most 20 classes."""
    plt = _pyplot()
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or not cm.size:
        raise ValueError(f"a confusion matrix must be square [C, C], got {cm.shape}")
    names = _class_labels(len(cm), class_names)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    size = max(3.5, 0.45 * len(cm) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if len(cm) <= 20:
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, f"{count:g}", ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    ticks = np.arange(len(cm))
    ax.set_xticks(ticks, names, rotation=45 if len(cm) > 8 else 0, fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return _save(fig, path, plt)


_PHASE_COLOURS = {"P": "tab:blue", "S": "tab:red", "noise": "0.5"}


def _pick_time(picks: Mapping[str, float | None], phase: str, sampling_rate: float) -> float | None:
    sample = picks.get(phase)
    if sample is None or not np.isfinite(sample):
        return None
    return float(sample) / sampling_rate


def pick_plot(waveform: np.ndarray, probs: np.ndarray, true_picks: Mapping[str, float | None],
              predicted_picks: Mapping[str, float | None], path: str | Path,
              sampling_rate: float = SAMPLING_RATE) -> Path:
    """A record (Z, N, E) above the picker's P, S and noise curves; true picks as solid lines,
    predicted picks dashed (picks are samples, {'P': ..., 'S': ...}, None/NaN where absent)."""
    plt = _pyplot()
    waveform, probs = np.asarray(waveform), np.asarray(probs)
    if waveform.ndim != 2 or waveform.shape[1] != 3 or probs.shape != waveform.shape:
        raise ValueError(f"pick_plot needs a [T, 3] waveform and [T, 3] probabilities (P, S, noise), got "
                         f"{waveform.shape} and {probs.shape}")
    t = np.arange(len(waveform)) / sampling_rate
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True,
                                      gridspec_kw={"height_ratios": [1.6, 1.0]})
    scaled = waveform / (np.abs(waveform).max(axis=0) + 1e-12)
    for c, name in enumerate("ZNE"):
        top.plot(t, scaled[:, c] - 2.2 * c, lw=0.5, color="k")
        top.text(t[0], -2.2 * c + 0.6, name, fontsize=8)
    top.set_yticks([])
    for c, name in enumerate(("P", "S", "noise")):
        bottom.plot(t, probs[:, c], lw=1, color=_PHASE_COLOURS[name], label=name)
    for phase in ("P", "S"):
        for picks, style, kind in ((true_picks, "-", "true"), (predicted_picks, "--", "predicted")):
            at = _pick_time(picks, phase, sampling_rate)
            if at is not None:
                for ax in (top, bottom):
                    ax.axvline(at, color=_PHASE_COLOURS[phase], ls=style, lw=1.2,
                               label=f"{kind} {phase}" if ax is bottom else None)
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_ylabel("probability")
    bottom.set_xlabel("time (s)")
    bottom.legend(fontsize=7, ncol=4, loc="upper right")
    fig.tight_layout()
    return _save(fig, path, plt)


def residual_histograms(residuals_by_phase: Mapping[str, np.ndarray], path: str | Path,
                        limit_s: float = 1.0) -> Path:
    """One histogram per phase of onset residuals (predicted - true, s) within +-limit_s, with the
    +-0.1 s and +-0.5 s marks, the MAE and the count falling outside the range."""
    plt = _pyplot()
    if not residuals_by_phase:
        raise ValueError("no residuals to plot")
    bins = np.linspace(-limit_s, limit_s, 41)
    fig, axes = plt.subplots(1, len(residuals_by_phase), figsize=(4.2 * len(residuals_by_phase), 3.4),
                             squeeze=False)
    for ax, (phase, residuals) in zip(axes[0], residuals_by_phase.items(), strict=True):
        r = np.asarray(residuals, np.float64).reshape(-1)
        r = r[np.isfinite(r)]
        inside = r[np.abs(r) <= limit_s]
        ax.hist(inside, bins=bins, color=_PHASE_COLOURS.get(phase, "tab:green"))
        for edge in (0.1, 0.5):
            for sign in (-1, 1):
                ax.axvline(sign * edge, color="0.4", lw=0.6, ls=":" if edge == 0.1 else "--")
        mae = f"{np.mean(np.abs(r)):.3f} s" if len(r) else "n/a"
        ax.set_title(f"{phase}: n = {len(r)}, MAE {mae}, {len(r) - len(inside)} beyond +-{limit_s:g} s",
                     fontsize=8)
        ax.set_xlabel("predicted - true onset (s)")
    axes[0, 0].set_ylabel("picks")
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: str | Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path
