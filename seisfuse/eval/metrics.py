"""Evaluation metrics: cross-modal retrieval, and the downstream tasks of SFM and SeisLM.

Retrieval: item i of one modality is paired with item i of the other. For each query the rank of its
pair among all N candidates (1 = retrieved first) gives Recall@k (fraction of queries whose pair is in
the top k), mean and median rank. A random ranking has R@k = k/N and an expected rank (N + 1)/2;
those are reported as `chance/...` so a number is never read without its floor.

Downstream (docs/metrics.md states every key and the originals' quirks):
- segmentation: SFM's `SegmentationMetric` (confusion matrix, PA, CPA, MPA, IoU, mIoU, FWIoU);
- regression: what SFM's `evaluateRegression` logs (MSE, PSNR, 1 - MS-SSIM), in JAX so it can run
  inside a jitted step, and MSE + MS-SSIM as the differentiable training loss SFM uses;
- phase picking: the three tasks of the SeisBench pick benchmark SeisLM reports (event detection,
  P/S discrimination, onset residuals) on windows steered around the picks;
- classification: accuracy, per-class and macro F1, confusion matrix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

KS: tuple[int, ...] = (1, 5, 10)


def similarity(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine similarity [Nq, Nc] of two embedding sets (normalised here, so any scale works)."""
    q, c = _unit(queries, "queries"), _unit(candidates, "candidates")
    if q.shape[1] != c.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]}, candidates {c.shape[1]}")
    return q @ c.T


def pair_ranks(sim: np.ndarray) -> np.ndarray:
    """1-based rank of the paired candidate (column i for query i) in each row of a square matrix.

    Ties count against the query: a candidate scoring equal to the pair ranks ahead of it, so a
    collapsed model (all scores equal) gets rank N, never a flattering rank 1.
    """
    sim = np.asarray(sim, np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"retrieval needs a square [N, N] similarity matrix of pairs, got {sim.shape}")
    positive = np.diagonal(sim)[:, None]
    return np.sum(sim >= positive, axis=1)


def rank_metrics(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k, mean and median rank of 1-based ranks."""
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["mean_rank"] = float(np.mean(ranks))
    out["median_rank"] = float(np.median(ranks))
    return out


def chance_metrics(n: int, ks: Sequence[int] = KS) -> dict[str, float]:
    """What a random ranking of n candidates scores in expectation."""
    out = {f"R@{k}": min(k, n) / n for k in ks}
    out["mean_rank"] = out["median_rank"] = (n + 1) / 2
    return out


def retrieval_metrics(embeddings: Mapping[str, np.ndarray], a: str = "image", b: str = "waveform",
                      ks: Sequence[int] = KS, prefix: str = "retrieval") -> dict[str, float]:
    """Flat dict: `{prefix}/{x}2{y}/R@k`, mean/median rank both ways (image -> img, waveform -> wav),
    `chance/...` for N pairs, and `num_pairs`."""
    for name in (a, b):
        if name not in embeddings:
            raise KeyError(f"no {name!r} embeddings; got {sorted(embeddings)}")
    x, y = np.asarray(embeddings[a]), np.asarray(embeddings[b])
    if len(x) != len(y):
        raise ValueError(f"{len(x)} {a} embeddings but {len(y)} {b} embeddings: pairs must align")
    sim = similarity(x, y)
    out: dict[str, float] = {}
    for direction, matrix in ((f"{short(a)}2{short(b)}", sim), (f"{short(b)}2{short(a)}", sim.T)):
        for key, value in rank_metrics(pair_ranks(matrix), ks).items():
            out[f"{prefix}/{direction}/{key}"] = value
    out.update({f"chance/{k}": v for k, v in chance_metrics(len(x), ks).items()})
    out["num_pairs"] = float(len(x))
    return out


def short(modality: str) -> str:
    """Key abbreviation of a modality name: image -> img, waveform -> wav, others unchanged."""
    return {"image": "img", "waveform": "wav"}.get(modality, modality)


def _unit(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{what} must be a non-empty [N, D] array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or inf")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------------------------
# JSON


def to_jsonable(value: Any) -> Any:
    """Metrics as plain JSON values for metrics.json: arrays -> lists, numpy/JAX scalars -> int/float,
    NaN and inf -> None (json.dumps would write NaN, which strict JSON readers refuse)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)) or np.isscalar(value):
        array = np.asarray(value)
        if array.ndim:
            return [to_jsonable(v) for v in array]
        item = array.item()
        if isinstance(item, float) and not math.isfinite(item):
            return None
        return item
    if value is None:
        return None
    raise TypeError(f"cannot write a {type(value).__name__} to metrics.json")


# --------------------------------------------------------------------------------------------------
# Class maps: segmentation and classification


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def class_indices(pred: Any, label_shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """Predicted class indices of label's shape: `pred` as given (integer class map) or the argmax of
    scores with one extra trailing class axis (a [.., 1] channel axis on the labels is allowed)."""
    num_classes, label_shape = _check_num_classes(num_classes), tuple(label_shape)
    pred = np.asarray(pred)
    scores_shape = label_shape + (num_classes,)
    channel_scores_shape = label_shape[:-1] + (num_classes,) if label_shape[-1:] == (1,) else None
    if pred.shape == label_shape:
        if pred.dtype.kind in "biu":
            indices = pred.astype(np.int64)
        elif pred.dtype.kind == "f" and np.all(np.isfinite(pred)) and np.all(pred == np.round(pred)):
            indices = pred.astype(np.int64)
        else:
            raise ValueError(f"predictions of the labels' shape {label_shape} must be integer class "
                             f"indices (got {pred.dtype} values that are not whole numbers); pass "
                             f"logits/probabilities with a trailing axis of {num_classes} classes instead")
    elif pred.shape == scores_shape or pred.shape == channel_scores_shape:
        if not np.all(np.isfinite(pred)):
            raise ValueError("class scores contain NaN or inf")
        indices = np.argmax(pred, axis=-1)
        if pred.shape != scores_shape:
            indices = indices[..., None]
    else:
        raise ValueError(f"predictions of shape {pred.shape} do not fit labels of shape {label_shape}: "
                         f"expected class indices of the labels' shape or scores of shape "
                         f"{scores_shape} (num_classes={num_classes})")
    bad = (indices < 0) | (indices >= num_classes)
    if np.any(bad):
        raise ValueError(f"{int(bad.sum())} predicted classes outside [0, {num_classes}), e.g. "
                         f"{int(indices[bad].flat[0])}: is num_classes={num_classes} right?")
    return indices


def confusion_matrix(pred: Any, label: Any, num_classes: int) -> np.ndarray:
    """[C, C] int64 counts, rows = true class, columns = predicted class, as SFM's SegmentationMetric.

    Pixels whose label is outside [0, C) are ignored (so an ignore index such as 255 or -1 drops
    out); predictions outside [0, C) are an error. Sum the matrices of several batches to
    accumulate, then call `segmentation_metrics_from_confusion`.
    """
    num_classes = _check_num_classes(num_classes)
    label = np.asarray(label)
    if label.dtype.kind not in "biuf":
        raise ValueError(f"labels must be numeric class indices, got dtype {label.dtype}")
    pred = class_indices(pred, label.shape, num_classes)
    with np.errstate(invalid="ignore"):
        keep = (label >= 0) & (label < num_classes)  # NaN labels compare False: ignored too
    kept = label[keep]
    if kept.dtype.kind == "f" and np.any(kept != np.floor(kept)):
        raise ValueError("labels must be whole class numbers; got fractional values")
    index = num_classes * kept.astype(np.int64) + pred[keep]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics_from_confusion(cm: Any) -> dict[str, Any]:
    """SFM's segmentation metrics from a confusion matrix (rows = truth).

    PA = trace / total; CPA[c] = cm[c, c] / row c (recall of the true class c); MPA = nanmean(CPA);
    IoU[c] = cm[c, c] / (row c + column c - cm[c, c]); mIoU = nanmean(IoU); FWIoU = sum over classes
    present in the truth of (row c / total) * IoU[c]. A class absent from truth and prediction has
    CPA = IoU = NaN and is left out of the means; one only predicted has CPA = NaN and IoU = 0.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.dtype.kind not in "biuf":
        raise ValueError(f"a confusion matrix must be a square numeric [C, C] array, got {cm.shape} "
                         f"{cm.dtype}")
    if not np.all(np.isfinite(cm)) or np.any(cm < 0):
        raise ValueError("a confusion matrix holds counts: NaN, inf or negative entries found")
    cm = cm.astype(np.float64)
    total = cm.sum()
    if total == 0:
        raise ValueError("the confusion matrix is empty: no pixel had a label in [0, num_classes)")
    diag, rows, cols = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cpa = diag / rows
        iou = diag / (rows + cols - diag)
    freq = rows / total
    present = freq > 0
    return {"PA": float(diag.sum() / total), "CPA": cpa, "MPA": float(np.nanmean(cpa)), "IoU": iou,
            "mIoU": float(np.nanmean(iou)), "FWIoU": float(np.sum(freq[present] * iou[present]))}


def segmentation_metrics(pred: Any, label: Any, num_classes: int) -> dict[str, Any]:
    """PA, CPA (per class), MPA, IoU (per class), mIoU, FWIoU of one batch or a whole set.

    pred: class maps of label's shape, or logits/probabilities with a trailing class axis (argmax).
    Labels outside [0, num_classes) are ignored. See `segmentation_metrics_from_confusion`.
    """
    return segmentation_metrics_from_confusion(confusion_matrix(pred, label, num_classes))


def classification_metrics(logits_or_pred: Any, labels: Any, num_classes: int) -> dict[str, Any]:
    """Accuracy, per-class F1, macro F1 and the confusion matrix (rows = truth) of N examples.

    F1[c] = 2 TP / (2 TP + FP + FN); NaN for a class neither true nor predicted anywhere, and
    macro_f1 = nanmean(F1) (scikit-learn's macro average over the classes that occur). Unlike
    segmentation, a label outside [0, num_classes) is an error here, not ignored.
    """
    num_classes = _check_num_classes(num_classes)
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("no examples to score")
    with np.errstate(invalid="ignore"):
        outside = ~((labels >= 0) & (labels < num_classes))
    if np.any(outside):
        raise ValueError(f"{int(outside.sum())} labels outside [0, {num_classes}), e.g. "
                         f"{labels[outside].flat[0]!r}: is num_classes={num_classes} right?")
    cm = confusion_matrix(logits_or_pred, labels, num_classes)
    tp = np.diag(cm).astype(np.float64)
    errors = cm.sum(axis=0) + cm.sum(axis=1) - 2 * tp  # FP + FN
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * tp / (2 * tp + errors)
    return {"accuracy": float(tp.sum() / cm.sum()), "f1": f1, "macro_f1": float(np.nanmean(f1)),
            "confusion_matrix": cm, "count": int(cm.sum())}


# --------------------------------------------------------------------------------------------------
# Regression (SFM util/msssim.py and engine_finetune.evaluateRegression), in JAX

MSSSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_MIN_MSSSIM_SIZE = 2 ** (len(MSSSIM_WEIGHTS) - 1)
WINDOW_SIZE = 11  # largest Gaussian window; smaller images use min(11, H, W)


def _gaussian_window(size: int, sigma: float = 1.5) -> np.ndarray:
    """[size, size] window in float32, rounded as the original builds it (a float32 tensor of the
    exponentials, normalised, outer product): at pixel values near 255 a window rounded otherwise
    moves MS-SSIM by ~1e-5 through E[x^2] - E[x]^2."""
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2)).astype(np.float32)
    g = g / np.float32(g.astype(np.float64).sum())
    return np.outer(g, g)


def _images(pred: Any, target: Any, what: str) -> tuple[jax.Array, jax.Array]:
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"{what} needs prediction and target of one NHWC shape [B, H, W, C], got "
                         f"{pred.shape} and {target.shape}")
    dtype = jnp.result_type(pred.dtype, target.dtype, jnp.float32)
    return pred.astype(dtype), target.astype(dtype)


def _value_range(x: jax.Array) -> jax.Array:
    """The original's L, inferred from the first argument: (255 if max > 128 else 1) - (-1 if
    min < -0.5 else 0)."""
    high = jnp.where(jnp.max(x) > 128, 255.0, 1.0)
    low = jnp.where(jnp.min(x) < -0.5, -1.0, 0.0)
    return (high - low).astype(x.dtype)


def _ssim_and_cs(x: jax.Array, y: jax.Array, window_size: int,
                 val_range: float | None) -> tuple[jax.Array, jax.Array]:
    """Mean SSIM map and mean contrast sensitivity over the whole batch (size_average=True), with a
    Gaussian window of min(window_size, H, W) and no padding, per channel."""
    _, height, width, channels = x.shape
    size = min(window_size, height, width)
    # The five local moments in one depthwise convolution (channels are filtered independently).
    moments = jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1)
    window = np.tile(_gaussian_window(size)[:, :, None, None], (1, 1, 1, 5 * channels))
    smoothed = lax.conv_general_dilated(moments, jnp.asarray(window, x.dtype), (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=5 * channels, precision=lax.Precision.HIGHEST)
    mu1, mu2, e11, e22, e12 = jnp.split(smoothed, 5, axis=-1)
    span = _value_range(x) if val_range is None else jnp.asarray(val_range, x.dtype)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq, sigma2_sq, sigma12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu1_mu2
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    v1 = 2.0 * sigma12 + c2
    v2 = sigma1_sq + sigma2_sq + c2
    ssim_map = ((2 * mu1_mu2 + c1) * v1) / ((mu1_sq + mu2_sq + c1) * v2)
    return jnp.mean(ssim_map), jnp.mean(v1 / v2)


def _avg_pool_2x2(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


@partial(jax.jit, static_argnames=("window_size", "val_range"))
def _ssim(pred: jax.Array, target: jax.Array, window_size: int, val_range: float | None) -> jax.Array:
    return _ssim_and_cs(pred, target, window_size, val_range)[0]


@partial(jax.jit, static_argnames=("window_size", "val_range", "normalize"))
def _msssim(pred: jax.Array, target: jax.Array, window_size: int, val_range: float | None,
            normalize: bool) -> jax.Array:
    sims, css = [], []
    for level in range(len(MSSSIM_WEIGHTS)):
        if level:
            pred, target = _avg_pool_2x2(pred), _avg_pool_2x2(target)
        sim, cs = _ssim_and_cs(pred, target, window_size, val_range)
        sims.append(sim)
        css.append(cs)
    sims, css = jnp.stack(sims), jnp.stack(css)
    if normalize:
        sims, css = (sims + 1) / 2, (css + 1) / 2
    weights = jnp.asarray(MSSSIM_WEIGHTS, sims.dtype)
    return jnp.prod(css[:-1] ** weights[:-1] * sims[-1] ** weights[-1])


@jax.jit
def _psnr(pred: jax.Array, target: jax.Array) -> jax.Array:
    rmse = jnp.sqrt(jnp.mean((jnp.clip(pred, 0, 1) - jnp.clip(target, 0, 1)) ** 2))
    return 20 * jnp.log10(1 / rmse)


def _check_msssim_size(pred: jax.Array) -> None:
    if min(pred.shape[1:3]) < _MIN_MSSSIM_SIZE:
        raise ValueError(f"MS-SSIM needs images of at least {_MIN_MSSSIM_SIZE}x{_MIN_MSSSIM_SIZE} "
                         f"({len(MSSSIM_WEIGHTS)} scales of 2x2 pooling), got {pred.shape[1:3]}")


def ssim(pred: Any, target: Any, *, window_size: int = WINDOW_SIZE,
         val_range: float | None = None) -> jax.Array:
    """SSIM of NHWC images, averaged over the batch, as SFM's `ssim` (value range inferred from
    `pred`, the first argument, unless given). Differentiable; the similarity, 1 = identical."""
    pred, target = _images(pred, target, "ssim")
    return _ssim(pred, target, window_size, val_range)


def msssim(pred: Any, target: Any, *, window_size: int = WINDOW_SIZE, val_range: float | None = None,
           normalize: bool = True) -> jax.Array:
    """MS-SSIM of NHWC images as SFM's `msssim` (the similarity; the logged 'msssim' is 1 - this).

    Five scales with 2x2 average pooling; at each, SSIM and the contrast sensitivity cs over the whole
    batch, the value range inferred again from the pooled `pred`. normalize=True (the default the
    original runs with) maps both by (v + 1) / 2. The result is prod_{i<4} cs_i^{w_i} * ssim_4^{w_4},
    the last scale's term entering four times (the original's product). Differentiable.
    """
    pred, target = _images(pred, target, "msssim")
    _check_msssim_size(pred)
    return _msssim(pred, target, window_size, val_range, normalize)


def psnr(pred: Any, target: Any) -> jax.Array:
    """PSNR in dB of data clamped to [0, 1], from the RMSE over the whole batch (SFM's PSNR);
    inf when the clamped arrays are equal."""
    return _psnr(*_images(pred, target, "psnr"))


@jax.jit
def _regression_metrics(pred: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
    return {"MSE": jnp.mean((pred - target) ** 2), "PSNR": _psnr(pred, target),
            "MSSSIM": 1 - _msssim(pred, target, WINDOW_SIZE, None, True),
            "SSIM": 1 - _ssim(pred, target, WINDOW_SIZE, None)}


def regression_metrics(pred: Any, target: Any) -> dict[str, jax.Array]:
    """What SFM's evaluateRegression computes for one batch (output, target), as JAX scalars.

    MSE: mean squared error over the batch; PSNR: `psnr`; MSSSIM: 1 - `msssim` (normalised, value
    range from `pred`): the quantity the original logs as 'msssim', lower is better; SSIM:
    1 - `ssim`, the original's SSIM module (not logged by evaluateRegression). Everything is computed
    over the whole batch, not per image; the original's eval-set figure is the batch-size-weighted
    mean of these per-batch values (`average_batches`). Jit-able.
    """
    pred, target = _images(pred, target, "regression_metrics")
    _check_msssim_size(pred)
    return _regression_metrics(pred, target)


def regression_loss(pred: Any, target: Any, msssim_weight: float = 0.5) -> jax.Array:
    """SFM's regression training loss (1 - a) * MSE + a * (1 - MS-SSIM), value range from `pred`.

    a = 0.5 is the original's `forward_loss` (denoising, reflectivity). Its interpolation task uses
    a = 0.1 with the input image as the first argument: regression_loss(image, completed, 0.1).
    """
    if isinstance(msssim_weight, (int, float)) and not 0 <= msssim_weight <= 1:
        raise ValueError(f"msssim_weight must lie in [0, 1], got {msssim_weight}")
    pred, target = _images(pred, target, "regression_loss")
    _check_msssim_size(pred)
    mse = jnp.mean((pred - target) ** 2)
    return (1 - msssim_weight) * mse + msssim_weight * (1 - _msssim(pred, target, WINDOW_SIZE, None, True))


def average_batches(batch_metrics: Sequence[Mapping[str, Any]],
                    batch_sizes: Sequence[int]) -> dict[str, float]:
    """Eval-set figures as SFM's MetricLogger forms them: per-batch scalars averaged with the batch
    sizes as weights (its 'msssim', 'psnr', 'mse', and in segmentation fine-tuning 'acc', 'miou')."""
    if len(batch_metrics) != len(batch_sizes) or not batch_metrics:
        raise ValueError(f"need one batch size per batch, got {len(batch_metrics)} batches and "
                         f"{len(batch_sizes)} sizes")
    sizes = np.asarray(batch_sizes, np.float64)
    if np.any(sizes <= 0):
        raise ValueError("batch sizes must be positive")
    keys = set(batch_metrics[0])
    if any(set(m) != keys for m in batch_metrics):
        raise ValueError("every batch must report the same metric keys")
    out = {}
    for key in sorted(keys):
        values = np.asarray([np.asarray(m[key], np.float64) for m in batch_metrics])
        if values.ndim != 1:
            raise ValueError(f"{key!r} is not a scalar per batch; per-class figures of a set come from "
                             f"the summed confusion matrices instead")
        out[key] = float(np.sum(values * sizes) / sizes.sum())
    return out


# --------------------------------------------------------------------------------------------------
# Phase picking: the SeisBench pick benchmark's three tasks, as SeisLM evaluates its picker

PHASES: tuple[str, ...] = ("P", "S")  # probability channels 0 and 1; channel 2 is noise
_DETECTION_KEYS = ("auc", "precision", "recall", "f1", "threshold")
_PHASE_KEYS = ("precision", "recall", "f1", "threshold", "mcc", "mcc_threshold")
_THRESHOLD_NAMES = ("detection", "phase", "phase_mcc")
_MCC_CANDIDATES = 50


def _binary_inputs(scores: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"{what} needs 1-D scores and labels of one length, got {scores.shape} and "
                         f"{labels.shape}")
    if labels.dtype != bool:
        if labels.dtype.kind not in "iuf" or not np.all((labels == 0) | (labels == 1)):
            raise ValueError(f"{what} labels must be booleans or 0/1")
        labels = labels == 1
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{what} scores contain NaN or inf")
    return scores, labels


def _need_both_classes(labels: np.ndarray, what: str, names: tuple[str, str]) -> None:
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise ValueError(f"{what} needs both classes; got {positives} {names[0]} and "
                         f"{len(labels) - positives} {names[1]}")


def roc_auc(scores: Any, positive: Any) -> float:
    """Area under the ROC curve (ties count one half), equal to scikit-learn's roc_auc_score."""
    from scipy.stats import rankdata

    scores, positive = _binary_inputs(scores, positive, "roc_auc")
    _need_both_classes(positive, "roc_auc", ("positives", "negatives"))
    n_pos = positive.sum()
    n_neg = len(positive) - n_pos
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _best_f1(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float, float, float]:
    """Precision, recall, F1 and threshold at the F1-optimal point of the precision-recall curve.

    As scikit-learn's precision_recall_curve (positive when score >= threshold, one point per distinct
    score) and the benchmark's nanargmax over it: the first maximum counting from the lowest threshold.
    """
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # last row of each distinct score
    tps = np.cumsum(hits)[last].astype(np.float64)
    fps = last + 1 - tps
    precision, recall = tps / (tps + fps), tps / tps[-1]
    with np.errstate(invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    best = len(f1) - 1 - int(np.nanargmax(f1[::-1]))
    return float(precision[best]), float(recall[best]), float(f1[best]), float(ranked[last[best]])


def _prf(positive: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """Binary precision, recall, F1, 0 where undefined (scikit-learn's zero_division)."""
    tp = float(np.sum(positive & predicted))
    fp = float(np.sum(~positive & predicted))
    fn = float(np.sum(positive & ~predicted))
    return (tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0,
            2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)


def _mcc(positive: np.ndarray, predicted: np.ndarray) -> float:
    """Matthews correlation coefficient, 0 when undefined (as scikit-learn's matthews_corrcoef)."""
    tp = float(np.sum(positive & predicted))
    tn = float(np.sum(~positive & ~predicted))
    fp = float(np.sum(~positive & predicted))
    fn = float(np.sum(positive & ~predicted))
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def detection_metrics(scores: Any, is_event: Any, threshold: float | None = None) -> dict[str, float]:
    """Task 1, event vs noise windows: ROC AUC and precision/recall/F1 at a threshold.

    threshold=None chooses the F1-optimal threshold on these windows (the benchmark's dev set; score
    >= threshold counts as an event there); a given threshold (from a dev run) is applied as the
    benchmark applies it to the test set, score > threshold.
    """
    scores, is_event = _binary_inputs(scores, is_event, "detection_metrics")
    _need_both_classes(is_event, "detection_metrics", ("event windows", "noise windows"))
    if threshold is None:
        precision, recall, f1, threshold = _best_f1(scores, is_event)
    else:
        precision, recall, f1 = _prf(is_event, scores > threshold)
    return {"auc": roc_auc(scores, is_event), "precision": precision, "recall": recall, "f1": f1,
            "threshold": float(threshold), "num_events": int(is_event.sum()),
            "num_noise": int((~is_event).sum())}


def phase_discrimination_metrics(scores: Any, is_p: Any, threshold: float | None = None,
                                 mcc_threshold: float | None = None) -> dict[str, float]:
    """Task 2, P vs S on windows holding one phase; score high = P (max P / max S in the window).

    Scores are clipped to +-1e100 (an S curve at zero gives inf) and NaN scores dropped, as the
    benchmark does. threshold=None: F1-optimal threshold on these windows (score >= threshold is P);
    mcc_threshold=None: the best MCC over 50 thresholds spread over the sorted scores (score >
    threshold is P), the benchmark's dev-set choice. Given thresholds are applied with score >.
    """
    scores, is_p = np.asarray(scores, np.float64), np.asarray(is_p)
    if scores.shape != is_p.shape:
        raise ValueError(f"phase_discrimination_metrics needs scores and labels of one shape, got "
                         f"{scores.shape} and {is_p.shape}")
    keep = ~np.isnan(scores)
    scores, is_p = _binary_inputs(np.clip(scores[keep], -1e100, 1e100), is_p[keep],
                                  "phase_discrimination_metrics")
    _need_both_classes(is_p, "phase_discrimination_metrics", ("P windows", "S windows"))
    if threshold is None:
        precision, recall, f1, threshold = _best_f1(scores, is_p)
    else:
        precision, recall, f1 = _prf(is_p, scores > threshold)
    if mcc_threshold is None:
        ranked = np.sort(scores)
        candidates = ranked[np.linspace(0, len(ranked) - 1, _MCC_CANDIDATES, dtype=int)]
        mccs = [_mcc(is_p, scores > t) for t in candidates]
        best = int(np.argmax(mccs))
        mcc, mcc_threshold = mccs[best], float(candidates[best])
    else:
        mcc = _mcc(is_p, scores > mcc_threshold)
    return {"precision": precision, "recall": recall, "f1": f1, "threshold": float(threshold),
            "mcc": mcc, "mcc_threshold": float(mcc_threshold), "num_P": int(is_p.sum()),
            "num_S": int((~is_p).sum())}


def onset_metrics(residuals_s: Any, tolerances_s: Sequence[float] = (0.1, 0.5)) -> dict[str, float]:
    """Task 3, onset residuals (predicted - true, seconds): count, mean, std, RMSE, MAE and the share
    within +-t for each tolerance (keys `within_{t}s`). The benchmark's `std_s` column is the RMSE.
    NaN statistics when there are no residuals."""
    r = np.asarray(residuals_s, np.float64).reshape(-1)
    if not np.all(np.isfinite(r)):
        raise ValueError("onset residuals contain NaN or inf")
    out: dict[str, float] = {"count": len(r)}
    if not len(r):
        out.update(dict.fromkeys(["mean_s", "std_s", "rmse_s", "mae_s"], math.nan))
        out.update({f"within_{t:g}s": math.nan for t in tolerances_s})
        return out
    out.update({"mean_s": float(r.mean()), "std_s": float(r.std()), "rmse_s": float(np.sqrt(np.mean(r**2))),
                "mae_s": float(np.mean(np.abs(r)))})
    out.update({f"within_{t:g}s": float(np.mean(np.abs(r) <= t)) for t in tolerances_s})
    return out


@dataclass(frozen=True)
class PickTargets:
    """Evaluation windows in the benchmark's manner: [start, end) sample indices into record `record`.

    Detection rows: per record an event window around its first arrival (or a noise window if it has
    no pick), plus a noise window before the first arrival when that lies more than a window into
    the record. Phase rows: one per pick that a window can isolate from the other pick.
    """

    detection_record: np.ndarray
    detection_start: np.ndarray
    detection_end: np.ndarray
    is_event: np.ndarray
    phase_record: np.ndarray
    phase_start: np.ndarray
    phase_end: np.ndarray
    is_p: np.ndarray
    onset: np.ndarray  # true onset sample, as given


def _select_window(npts: int, window: int, rng: np.random.Generator, containing: int | None = None,
                   bounds: int = 0) -> tuple[int, int]:
    """The benchmark's select_window_containing: a random window of `window` samples in [0, npts),
    holding `containing` at least `bounds` samples from either edge; the whole range if impossible."""
    if npts <= window:
        return 0, npts
    if containing is None:
        start = int(rng.integers(0, npts - window + 1))
        return start, start + window
    earliest = max(0, containing - window + bounds)
    latest = min(npts - window, containing - bounds)
    if latest <= earliest:
        return 0, npts
    start = int(rng.integers(earliest, latest + 1))
    return start, start + window


def _onsets(values: Any, n: int, what: str) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.shape != (n,):
        raise ValueError(f"{what} must hold one onset sample per record ({n}), NaN where absent; got "
                         f"shape {values.shape}")
    if np.any(np.isinf(values)):
        raise ValueError(f"{what} contains inf; mark absent picks with NaN")
    return values


def pick_targets(p_true: Any, s_true: Any, length: int, sampling_rate: float, *,
                 detection_window_s: float = 30.0, phase_window_s: float = 10.0,
                 seed: int = 0) -> PickTargets:
    """Steer the benchmark's windows around the picks of N records of `length` samples.

    Detection (task 1): windows of detection_window_s around the first arrival, which stays 1 s from
    the edges; noise windows in records without picks or before a late first arrival. Phase (tasks
    2/3): windows of phase_window_s holding one onset at least 0.5 s from the edges and from the
    other phase's onset +- 0.5 s; a pick that cannot be isolated so gets no window. Placement is
    random (seeded). Picks outside [0, length) count as absent.
    """
    if length < 1 or sampling_rate <= 0:
        raise ValueError(f"need a positive record length and sampling rate, got {length}, {sampling_rate}")
    p_true = _onsets(p_true, np.size(p_true), "p_true")
    s_true = _onsets(s_true, len(p_true), "s_true")
    rng = np.random.default_rng(seed)
    det_window = round(detection_window_s * sampling_rate)
    phase_window = round(phase_window_s * sampling_rate)
    det_bounds, spacing = round(1.0 * sampling_rate), int(0.5 * sampling_rate)
    detection: list[tuple[int, int, int, bool]] = []
    phase: list[tuple[int, int, int, bool, float]] = []
    for i, (p, s) in enumerate(zip(p_true, s_true, strict=True)):
        arrivals = sorted((float(t), name) for t, name in ((p, "P"), (s, "S"))
                          if np.isfinite(t) and 0 <= t < length)
        if not arrivals:
            detection.append((i, *_select_window(length, det_window, rng), False))
        else:
            first = arrivals[0][0]
            start, end = _select_window(length, det_window, rng, int(first), det_bounds)
            if end - start <= det_window:
                detection.append((i, start, end, True))
            if first > det_window:
                start, end = _select_window(min(length, int(first)), det_window, rng)
                if end - start <= det_window:
                    detection.append((i, start, end, False))
        for k, (onset, name) in enumerate(arrivals):
            before = 0 if k == 0 else int(arrivals[k - 1][0]) + spacing
            after = math.inf if k == len(arrivals) - 1 else int(arrivals[k + 1][0]) - spacing
            if after - before < phase_window or before > onset or after < onset:
                continue
            after = int(min(after, length))
            start, end = _select_window(after - before, phase_window, rng, int(onset) - before, spacing)
            if end - start <= phase_window:
                phase.append((i, start + before, end + before, name == "P", onset))

    def column(rows: list[tuple], j: int, dtype: Any) -> np.ndarray:
        return np.asarray([row[j] for row in rows], dtype)

    return PickTargets(column(detection, 0, np.int64), column(detection, 1, np.int64),
                       column(detection, 2, np.int64), column(detection, 3, bool),
                       column(phase, 0, np.int64), column(phase, 1, np.int64), column(phase, 2, np.int64),
                       column(phase, 3, bool), column(phase, 4, np.float64))


def _pick_probabilities(probs: Any) -> np.ndarray:
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 3 or probs.shape[2] != 3 or probs.shape[1] < 1:
        raise ValueError(f"picker outputs must be [N, T, 3] probabilities (P, S, noise), got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("picker probabilities contain NaN or inf")
    return probs


def window_scores(probs: Any, targets: PickTargets) -> dict[str, np.ndarray]:
    """The benchmark's per-window outputs from picker probabilities [N, T, 3] (P, S, noise).

    detection: max of (1 - noise) in each detection window; p_or_s: max P / max S in each phase
    window (inf/NaN where the S curve is zero there); p_pick, s_pick: the record sample of the P and
    S curves' maxima (first one on ties) in each phase window.
    """
    probs = _pick_probabilities(probs)
    detection = np.asarray([np.max(1 - probs[r, a:b, 2]) for r, a, b in
                            zip(targets.detection_record, targets.detection_start, targets.detection_end,
                                strict=True)], np.float64)
    p_or_s, picks = [], []
    for r, a, b in zip(targets.phase_record, targets.phase_start, targets.phase_end, strict=True):
        window = probs[r, a:b]
        with np.errstate(divide="ignore", invalid="ignore"):
            p_or_s.append(np.max(window[:, 0]) / np.max(window[:, 1]))
        picks.append(a + np.argmax(window[:, :2], axis=0))
    picks_array = np.asarray(picks, np.int64).reshape(-1, 2)
    return {"detection": detection, "p_or_s": np.asarray(p_or_s, np.float64),
            "p_pick": picks_array[:, 0], "s_pick": picks_array[:, 1]}


def predicted_picks(probs: Any) -> np.ndarray:
    """[N, 2] sample of the P and S curves' maxima over each whole record, for figures."""
    return np.argmax(_pick_probabilities(probs)[:, :, :2], axis=1)


def pick_metrics(probs: Any, p_true: Any, s_true: Any, sampling_rate: float, *,
                 thresholds: Mapping[str, float] | None = None, detection_window_s: float = 30.0,
                 phase_window_s: float = 10.0, seed: int = 0) -> dict[str, float]:
    """The pick benchmark's three tasks on picker outputs, as one flat dict.

    probs [N, T, 3] (P, S, noise); p_true, s_true [N] onset samples, NaN where absent. Keys:
    `detection/{auc,precision,recall,f1,threshold,num_events,num_noise}`,
    `phase/{precision,recall,f1,threshold,mcc,mcc_threshold,num_P,num_S}` and per phase
    `P/...`, `S/...` from `onset_metrics` of the residuals in the phase windows. Thresholds are
    chosen on these records unless `thresholds` gives `detection`, `phase`, `phase_mcc` (from a dev
    set). A task whose windows lack one of its classes reports NaN for its scores.
    """
    thresholds = dict(thresholds or {})
    unknown = set(thresholds) - set(_THRESHOLD_NAMES)
    if unknown:
        raise ValueError(f"unknown thresholds {sorted(unknown)}; expected some of {list(_THRESHOLD_NAMES)}")
    probs = _pick_probabilities(probs)
    p_true, s_true = _onsets(p_true, len(probs), "p_true"), _onsets(s_true, len(probs), "s_true")
    targets = pick_targets(p_true, s_true, probs.shape[1], sampling_rate, seed=seed,
                           detection_window_s=detection_window_s, phase_window_s=phase_window_s)
    scores = window_scores(probs, targets)
    out: dict[str, float] = {}

    n_events = int(targets.is_event.sum())
    if n_events and n_events < len(targets.is_event):
        detection = detection_metrics(scores["detection"], targets.is_event, thresholds.get("detection"))
    else:
        detection = {**dict.fromkeys(_DETECTION_KEYS, math.nan), "num_events": n_events,
                     "num_noise": len(targets.is_event) - n_events}
    out.update({f"detection/{k}": v for k, v in detection.items()})

    defined = ~np.isnan(scores["p_or_s"])
    n_p = int(targets.is_p[defined].sum())
    if n_p and n_p < int(defined.sum()):
        phase = phase_discrimination_metrics(scores["p_or_s"], targets.is_p, thresholds.get("phase"),
                                             thresholds.get("phase_mcc"))
    else:
        phase = {**dict.fromkeys(_PHASE_KEYS, math.nan), "num_P": n_p, "num_S": int(defined.sum()) - n_p}
    out.update({f"phase/{k}": v for k, v in phase.items()})

    for name, picked in (("P", scores["p_pick"]), ("S", scores["s_pick"])):
        rows = targets.is_p == (name == "P")
        residuals = (picked[rows] - targets.onset[rows]) / sampling_rate
        out.update({f"{name}/{k}": v for k, v in onset_metrics(residuals).items()})
    return out
