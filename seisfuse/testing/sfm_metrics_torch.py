"""SFM's fine-tuning metrics restated in plain torch (NCHW) and numpy, as references for tests.

Written from the original SFM-Finetune code: util/msssim.py (Gaussian window, ssim, msssim and the
SSIM / MSSSIM / PSNR modules), models_Regression.forward_loss, engine_finetune.evaluateRegression
(here without CUDA autocast), util/tools.accuracy (the per-batch pixel accuracy and mIoU that
engine_finetune.evaluate logs) and util/metrics.py's SegmentationMetric, whose FWIoU method reads a
misspelt attribute and raises: here it computes the formula the method intends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size: int, channels: int, dtype: torch.dtype) -> torch.Tensor:
    """[channels, 1, size, size] depthwise window, sigma 1.5, built in float32 as the original
    (torch.Tensor of the exponentials, normalised, outer product) and cast to the images' dtype."""
    g = torch.tensor([math.exp(-((i - size // 2) ** 2) / (2 * 1.5**2)) for i in range(size)],
                     dtype=torch.float32)
    g = (g / g.sum())[:, None]
    window = (g @ g.T)[None, None].expand(channels, 1, size, size).contiguous()
    return window.to(dtype)


def ssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11, window: torch.Tensor | None = None,
         val_range: float | None = None, full: bool = False):
    """Mean SSIM (and mean cs if full) over the whole batch; value range from img1 if not given."""
    if val_range is None:
        high = 255 if torch.max(img1) > 128 else 1
        low = -1 if torch.min(img1) < -0.5 else 0
        span = high - low
    else:
        span = val_range
    _, channels, height, width = img1.shape
    if window is None:
        window = gaussian_window(min(window_size, height, width), channels, img1.dtype)

    def smooth(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, padding=0, groups=channels)

    mu1, mu2 = smooth(img1), smooth(img2)
    mu1_sq, mu2_sq, mu1_mu2 = mu1.pow(2), mu2.pow(2), mu1 * mu2
    sigma1_sq = smooth(img1 * img1) - mu1_sq
    sigma2_sq = smooth(img2 * img2) - mu2_sq
    sigma12 = smooth(img1 * img2) - mu1_mu2
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    v1 = 2.0 * sigma12 + c2
    v2 = sigma1_sq + sigma2_sq + c2
    cs = torch.mean(v1 / v2)
    value = (((2 * mu1_mu2 + c1) * v1) / ((mu1_sq + mu2_sq + c1) * v2)).mean()
    return (value, cs) if full else value


def msssim(img1: torch.Tensor, img2: torch.Tensor, window_size: int = 11, val_range: float | None = None,
           normalize: bool = True) -> torch.Tensor:
    """Five scales, 2x2 average pooling after each (the last pooling included, as the original)."""
    weights = torch.tensor(WEIGHTS, dtype=img1.dtype)
    sims, css = [], []
    for _ in WEIGHTS:
        sim, cs = ssim(img1, img2, window_size=window_size, val_range=val_range, full=True)
        sims.append(sim)
        css.append(cs)
        img1, img2 = F.avg_pool2d(img1, (2, 2)), F.avg_pool2d(img2, (2, 2))
    sims, css = torch.stack(sims), torch.stack(css)
    if normalize:
        sims, css = (sims + 1) / 2, (css + 1) / 2
    return torch.prod((css**weights)[:-1] * (sims**weights)[-1])


def msssim_module(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """The original's MSSSIM() module: 1 - msssim(img1, img2)."""
    return 1 - msssim(img1, img2)


def ssim_module(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """The original's SSIM() module: 1 - ssim with its fixed 11x11 window."""
    return 1 - ssim(img1, img2, window=gaussian_window(11, img1.shape[1], img1.dtype))


def psnr_module(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """The original's PSNR() module: forward(a, b) calls torchPSNR(tar_img=a, prd_img=b)."""
    difference = torch.clamp(img2, 0, 1) - torch.clamp(img1, 0, 1)
    return 20 * torch.log10(1 / (difference**2).mean().sqrt())


def forward_loss(output: torch.Tensor, target: torch.Tensor, a: float = 0.5) -> torch.Tensor:
    """models_Regression.forward_loss as the training loop calls it, criterion(outputs, targets)."""
    return (1 - a) * F.mse_loss(output, target) + a * msssim_module(output, target)


def evaluate_regression(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """evaluateRegression's returned meters over (output, target) batches: 'mse', 'msssim', 'psnr'
    weighted by batch size; 'loss' (the per-batch MSE) updated with n=1, so unweighted."""
    sums = {"mse": 0.0, "msssim": 0.0, "psnr": 0.0}
    count, losses = 0, []
    with torch.no_grad():
        for output, target in batches:
            n = output.shape[0]
            values = {"mse": F.mse_loss(output, target), "msssim": msssim_module(output, target),
                      "psnr": psnr_module(output, target)}
            for key, value in values.items():
                sums[key] += value.item() * n
            losses.append(values["mse"].item())
            count += n
    return {"loss": float(np.mean(losses)), **{k: v / count for k, v in sums.items()}}


def batch_accuracy(output: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """util/tools.accuracy: pixel accuracy and mIoU of one batch (output [N, C, ...] scores), from a
    confusion matrix over the labels present in that batch's truth or prediction."""
    pred = output.argmax(dim=1).flatten().numpy()
    true = target.flatten().numpy()
    present = np.union1d(pred, true)
    matrix = np.zeros((len(present), len(present)))
    np.add.at(matrix, (np.searchsorted(present, true), np.searchsorted(present, pred)), 1)
    diag = np.diag(matrix)
    return diag.sum() / matrix.sum(), np.nanmean(diag / (matrix.sum(1) + matrix.sum(0) - diag))


class SegmentationMetric:
    """util/metrics.py: confusion matrix with rows = true labels, labels outside [0, C) ignored."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes))

    def add_batch(self, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
        assert pred.shape == label.shape
        keep = (label >= 0) & (label < self.num_classes)
        index = self.num_classes * label[keep] + pred[keep]
        self.matrix += np.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes,
                                                                                 self.num_classes)
        return self.matrix

    def pixel_accuracy(self) -> float:
        return np.diag(self.matrix).sum() / self.matrix.sum()

    def class_pixel_accuracy(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # an absent class: 0/0 = NaN, as the original
            return np.diag(self.matrix) / self.matrix.sum(axis=1)

    def mean_pixel_accuracy(self) -> float:
        return np.nanmean(self.class_pixel_accuracy())

    def iou(self) -> np.ndarray:
        diag = np.diag(self.matrix)
        with np.errstate(invalid="ignore"):
            return diag / (self.matrix.sum(axis=1) + self.matrix.sum(axis=0) - diag)

    def mean_iou(self) -> float:
        return np.nanmean(self.iou())

    def fwiou(self) -> float:
        freq = self.matrix.sum(axis=1) / self.matrix.sum()
        iou = self.iou()
        return (freq[freq > 0] * iou[freq > 0]).sum()
