"""Downstream metrics: SFM segmentation and regression (against a torch restatement of the
originals), the pick benchmark's three tasks and classification (against scikit-learn), figures."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from seisfuse.eval import metrics as m
from seisfuse.eval import plots
from seisfuse.testing import sfm_metrics_torch as ref

# ------------------------------------------------------------------------------------------------
# Segmentation


def test_confusion_matrix_and_metrics_by_hand():
    label = np.array([[0, 0, 1, 1], [2, 2, 255, -1]])  # 255 and -1: ignored pixels
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = m.confusion_matrix(pred, label, 4)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0],   # rows = truth
                                       [0, 2, 0, 0],
                                       [1, 0, 1, 0],
                                       [0, 0, 0, 0]])
    out = m.segmentation_metrics(pred, label, 4)
    assert out["PA"] == pytest.approx(4 / 6)
    np.testing.assert_allclose(out["CPA"][:3], [1 / 2, 1, 1 / 2])
    assert np.isnan(out["CPA"][3]) and np.isnan(out["IoU"][3])  # class 3 absent: NaN, not 0
    np.testing.assert_allclose(out["IoU"][:3], [1 / 3, 2 / 3, 1 / 2])
    assert out["MPA"] == pytest.approx(2 / 3)
    assert out["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert out["FWIoU"] == pytest.approx(2 / 6 * 1 / 3 + 2 / 6 * 2 / 3 + 2 / 6 * 1 / 2)


def test_a_class_only_predicted_has_zero_iou_and_no_cpa():
    out = m.segmentation_metrics(np.array([0, 1]), np.array([0, 0]), 2)
    assert np.isnan(out["CPA"][1]) and out["IoU"][1] == 0.0
    assert out["mIoU"] == pytest.approx(0.25)  # (1/2 + 0) / 2: the false class counts in mIoU


def test_accumulating_batches_equals_one_pass():
    rng = np.random.default_rng(0)
    label = rng.integers(-1, 5, (4, 16, 16))  # -1 ignored; class 4 outside num_classes=4, ignored
    pred = rng.integers(0, 4, (4, 16, 16))
    summed = m.confusion_matrix(pred[:1], label[:1], 4) + m.confusion_matrix(pred[1:], label[1:], 4)
    np.testing.assert_array_equal(summed, m.confusion_matrix(pred, label, 4))
    accumulated, once = m.segmentation_metrics_from_confusion(summed), m.segmentation_metrics(pred, label, 4)
    for key, value in once.items():
        np.testing.assert_array_equal(accumulated[key], value)


def test_segmentation_matches_the_original_definitions():
    rng = np.random.default_rng(1)
    reference = ref.SegmentationMetric(6)
    cm = np.zeros((6, 6), np.int64)
    for _ in range(3):
        label = rng.integers(0, 7, (2, 24, 24))  # 6 is out of range: ignored by both
        label[label == 5] = 0  # class 5 never true: NaN CPA for both
        pred = rng.integers(0, 6, (2, 24, 24))
        reference.add_batch(pred, label)
        cm += m.confusion_matrix(pred, label, 6)
    np.testing.assert_array_equal(cm, reference.matrix)
    out = m.segmentation_metrics_from_confusion(cm)
    for ours, theirs in ((out["PA"], reference.pixel_accuracy()),
                         (out["MPA"], reference.mean_pixel_accuracy()),
                         (out["mIoU"], reference.mean_iou()), (out["FWIoU"], reference.fwiou())):
        assert abs(ours - theirs) <= 1e-12
    np.testing.assert_allclose(out["CPA"], reference.class_pixel_accuracy(), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(out["IoU"], reference.iou(), rtol=1e-12)


def test_segmentation_takes_scores_with_a_class_axis():
    rng = np.random.default_rng(2)
    label = rng.integers(0, 3, (2, 8, 8))
    logits = rng.standard_normal((2, 8, 8, 3))
    expected = m.confusion_matrix(np.argmax(logits, -1), label, 3)
    np.testing.assert_array_equal(m.confusion_matrix(logits, label, 3), expected)
    np.testing.assert_array_equal(m.confusion_matrix(logits, label[..., None], 3), expected)  # NHWC labels
    np.testing.assert_array_equal(m.confusion_matrix(np.argmax(logits, -1).astype(np.float32), label, 3),
                                  expected)


def test_per_batch_figures_reproduce_what_sfm_fine_tuning_logs():
    rng = np.random.default_rng(12)
    batches = []
    for size in (3, 1):
        label = rng.integers(0, 4, (size, 12, 12))
        label[label == 3] = 0  # class 3 absent: the original's matrix omits it, ours gives it NaN
        batches.append((rng.standard_normal((size, 12, 12, 6)), label))
    ours = m.average_batches([{k: v for k, v in m.segmentation_metrics(logits, label, 6).items()
                               if k in ("PA", "mIoU")} for logits, label in batches], [3, 1])
    logged = [ref.batch_accuracy(torch.from_numpy(np.moveaxis(logits, -1, 1)), torch.from_numpy(label))
              for logits, label in batches]
    assert ours["PA"] == pytest.approx((3 * logged[0][0] + logged[1][0]) / 4, abs=1e-12)
    assert ours["mIoU"] == pytest.approx((3 * logged[0][1] + logged[1][1]) / 4, abs=1e-12)
    with pytest.raises(ValueError, match="not a scalar"):
        m.average_batches([m.segmentation_metrics(logits, label, 6) for logits, label in batches], [3, 1])


def test_segmentation_errors_are_named():
    label = np.zeros((2, 4, 4), int)
    with pytest.raises(ValueError, match="do not fit labels"):
        m.confusion_matrix(np.zeros((2, 4, 5), int), label, 3)
    with pytest.raises(ValueError, match="outside \\[0, 3\\)"):
        m.confusion_matrix(np.full((2, 4, 4), 3), label, 3)
    with pytest.raises(ValueError, match="not whole numbers"):
        m.confusion_matrix(np.full((2, 4, 4), 0.5), label, 3)
    with pytest.raises(ValueError, match="positive integer"):
        m.confusion_matrix(label, label, 0)
    with pytest.raises(ValueError, match="NaN"):
        m.confusion_matrix(np.full((2, 4, 4, 3), np.nan), label, 3)
    with pytest.raises(ValueError, match="empty"):
        m.segmentation_metrics(label, np.full((2, 4, 4), 255), 3)


# ------------------------------------------------------------------------------------------------
# Regression

SHAPE = (2, 32, 32, 1)


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _reference(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    p, t = _nchw(pred), _nchw(target)
    return {"MSE": torch.nn.functional.mse_loss(p, t).item(), "PSNR": ref.psnr_module(p, t).item(),
            "MSSSIM": ref.msssim_module(p, t).item(), "SSIM": ref.ssim_module(p, t).item()}


def _close(ours: dict, theirs: dict, tolerance: float) -> None:
    for key, value in theirs.items():
        error = abs(float(ours[key]) - value) / max(1.0, abs(value))
        assert error <= tolerance, (key, float(ours[key]), value)


def _pairs(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Inputs that take each branch of the original's value-range inference."""
    unit = rng.random(SHAPE)
    y, x = np.mgrid[0:32, 0:32] / 32.0
    layers = np.broadcast_to(np.sin(8 * y + 2 * x)[None, :, :, None], SHAPE)  # structured, in [-1, 1]
    spike = unit.copy()
    spike[0, 5, 5, 0] = 200.0  # max > 128 at full size only: L = 255 at scale 1, then 1 after pooling
    return {
        "unit": (unit, unit + 0.1 * rng.standard_normal(SHAPE)),
        "0-255": (255 * unit, 255 * unit + 20 * rng.standard_normal(SHAPE)),
        "signed": (layers, layers + 0.2 * rng.standard_normal(SHAPE)),
        "range from the first argument": (unit, 255 * unit),
        "range of each scale": (spike, unit),
    }


def test_regression_metrics_match_sfm_in_float64():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        for pred, target in _pairs(rng).values():
            _close(m.regression_metrics(pred, target), _reference(pred, target), 1e-9)
        unit, scaled = _pairs(rng)["range from the first argument"]
        assert abs(float(m.msssim(unit, scaled)) - float(m.msssim(scaled, unit))) > 1e-3  # asymmetric


def test_regression_metrics_match_sfm_in_float32_on_unit_range_data():
    rng = np.random.default_rng(4)
    for name in ("unit", "signed"):
        pred, target = (a.astype(np.float32) for a in _pairs(rng)[name])
        _close(m.regression_metrics(pred, target), _reference(pred, target), 1e-5)


def test_psnr_clamps_to_the_unit_range():
    pred, target = np.full(SHAPE, 0.5, np.float32), np.zeros(SHAPE, np.float32)
    assert float(m.psnr(pred, target)) == pytest.approx(20 * math.log10(2), abs=1e-5)
    assert float(m.psnr(pred, target - 3.0)) == pytest.approx(20 * math.log10(2), abs=1e-5)
    assert float(m.psnr(pred + 7.0, target)) == 0.0  # clamped to 1 vs 0: RMSE 1


def test_regression_loss_is_the_originals_jits_and_differentiates():
    rng = np.random.default_rng(5)
    pred, target = _pairs(rng)["unit"]
    with jax.enable_x64(True):
        for a in (0.5, 0.1):
            expected = ref.forward_loss(_nchw(pred), _nchw(target), a).item()
            assert float(m.regression_loss(pred, target, a)) == pytest.approx(expected, rel=1e-9)
    pred, target = pred.astype(np.float32), target.astype(np.float32)
    jitted = jax.jit(m.regression_metrics)(pred, target)
    _close(jitted, {k: float(v) for k, v in m.regression_metrics(pred, target).items()}, 1e-6)
    grad = jax.jit(jax.grad(m.regression_loss))(pred, target)
    assert np.all(np.isfinite(grad)) and float(np.abs(grad).max()) > 0
    assert float(m.regression_loss(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_eval_set_average_weights_batches_by_size():
    rng = np.random.default_rng(6)
    batches = [(rng.random((3, 32, 32, 1)), rng.random((3, 32, 32, 1))),
               (rng.random((1, 32, 32, 1)), rng.random((1, 32, 32, 1)))]
    with jax.enable_x64(True):
        per_batch = [m.regression_metrics(p, t) for p, t in batches]
    ours = m.average_batches(per_batch, [3, 1])
    theirs = ref.evaluate_regression((_nchw(p), _nchw(t)) for p, t in batches)
    for key, original in (("MSE", "mse"), ("MSSSIM", "msssim"), ("PSNR", "psnr")):
        assert ours[key] == pytest.approx(theirs[original], rel=1e-9)


def test_regression_errors_are_named():
    with pytest.raises(ValueError, match="one NHWC shape"):
        m.regression_metrics(np.zeros((2, 32, 32, 1)), np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="at least 16x16"):
        m.msssim(np.zeros((1, 8, 32, 1)), np.zeros((1, 8, 32, 1)))
    with pytest.raises(ValueError, match="msssim_weight"):
        m.regression_loss(np.zeros(SHAPE), np.zeros(SHAPE), 1.5)
    with pytest.raises(ValueError, match="one batch size per batch"):
        m.average_batches([{"MSE": 1.0}], [1, 2])


# ------------------------------------------------------------------------------------------------
# Picking


def test_onset_metrics_of_known_residuals():
    out = m.onset_metrics([0.05, -0.2, 0.6, 0.0])
    assert out["count"] == 4
    assert out["mean_s"] == pytest.approx(0.1125)
    assert out["mae_s"] == pytest.approx(0.2125)
    assert out["rmse_s"] == pytest.approx(math.sqrt((0.0025 + 0.04 + 0.36) / 4))
    assert out["std_s"] == pytest.approx(np.std([0.05, -0.2, 0.6, 0.0]))
    assert out["within_0.1s"] == 0.5 and out["within_0.5s"] == 0.75
    assert m.onset_metrics([])["count"] == 0 and math.isnan(m.onset_metrics([])["mae_s"])


def _records(n_events: int, n_noise: int, length: int, rng: np.random.Generator, p_shift: int, s_shift: int):
    """Picker outputs whose P and S curves peak at onset + shift, and noise-only records."""
    n = n_events + n_noise
    p = np.full(n, np.nan)
    s = np.full(n, np.nan)
    p[:n_events] = rng.integers(300, 900, n_events) + 0.5
    s[:n_events] = p[:n_events] + rng.integers(1100, 1500, n_events)
    t = np.arange(length)
    probs = np.zeros((n, length, 3))
    for i in range(n_events):
        probs[i, :, 0] = np.exp(-0.5 * ((t - (p[i] - 0.5 + p_shift)) / 8) ** 2)
        probs[i, :, 1] = np.exp(-0.5 * ((t - (s[i] - 0.5 + s_shift)) / 8) ** 2)
    probs[:, :, 1] += 1e-3  # S curve never exactly zero
    probs[:, :, 2] = 1 - probs[:, :, 0] - probs[:, :, 1]
    return probs, p, s


def test_pick_metrics_recover_constructed_residuals():
    rng = np.random.default_rng(7)
    probs, p, s = _records(12, 5, 3001, rng, p_shift=7, s_shift=-30)
    out = m.pick_metrics(probs, p, s, 100.0)
    # argmax at onset - 0.5 + shift: residuals 0.065 s for P and -0.305 s for S, in every window
    assert out["P/count"] == 12 and out["S/count"] == 12
    assert out["P/mae_s"] == pytest.approx(0.065) and out["P/mean_s"] == pytest.approx(0.065)
    assert out["S/mean_s"] == pytest.approx(-0.305) and out["S/rmse_s"] == pytest.approx(0.305)
    assert out["P/within_0.1s"] == 1.0 and out["S/within_0.1s"] == 0.0 and out["S/within_0.5s"] == 1.0
    assert out["detection/num_events"] == 12 and out["detection/num_noise"] == 5
    assert out["detection/auc"] == 1.0 and out["detection/f1"] == 1.0
    assert out["phase/num_P"] == 12 and out["phase/num_S"] == 12
    assert out["phase/f1"] == 1.0 and out["phase/mcc"] == 1.0
    assert json.loads(json.dumps(m.to_jsonable(out))) == pytest.approx(out)


def test_windows_are_steered_around_the_picks_like_the_benchmark():
    p = np.array([500.0, 500.0, np.nan, 3500.0])
    s = np.array([1800.0, 900.0, np.nan, np.nan])  # record 1: S 4 s after P
    targets = m.pick_targets(p, s, 6000, 100.0, seed=1)
    np.testing.assert_array_equal(targets.detection_record, [0, 1, 2, 3, 3])
    np.testing.assert_array_equal(targets.is_event, [True, True, False, True, False])
    length = targets.detection_end - targets.detection_start
    assert np.all(length == 3000)
    events = targets.is_event
    first = np.array([500.0, 500.0, np.nan, 3500.0])[targets.detection_record[events]]
    assert np.all(targets.detection_start[events] <= first - 100)
    assert np.all(first + 100 <= targets.detection_end[events])
    assert targets.detection_end[-1] <= 3500  # noise before a late first arrival
    # A 10 s window must isolate a pick between the neighbouring picks +- 0.5 s: record 1's P has
    # only 4 s before its S and gets none; its S, with the rest of the record after it, gets one.
    np.testing.assert_array_equal(targets.phase_record, [0, 0, 1, 3])
    np.testing.assert_array_equal(targets.is_p, [True, False, False, True])
    assert np.all(targets.phase_end - targets.phase_start == 1000)
    assert np.all(targets.phase_start + 50 <= targets.onset)
    assert np.all(targets.onset <= targets.phase_end - 50)
    assert targets.phase_end[0] <= 1800 - 50 and targets.phase_start[1] >= 500 + 50
    assert targets.phase_start[2] >= 500 + 50


def test_detection_and_phase_scores_match_scikit_learn():
    rng = np.random.default_rng(8)
    scores = np.round(rng.random(300), 2)  # ties
    truth = rng.random(300) < 0.3 + 0.4 * scores
    det = m.detection_metrics(scores, truth)
    assert det["auc"] == pytest.approx(skm.roc_auc_score(truth, scores), abs=1e-12)
    precision, recall, thresholds = skm.precision_recall_curve(truth, scores)
    with np.errstate(invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    best = np.nanargmax(f1)
    assert det["threshold"] == thresholds[best] and det["f1"] == pytest.approx(f1[best], abs=1e-12)
    assert det["precision"] == pytest.approx(precision[best]) and det["recall"] == pytest.approx(recall[best])
    applied = m.detection_metrics(scores, truth, threshold=0.5)
    sk = skm.precision_recall_fscore_support(truth, scores > 0.5, average="binary")
    assert (applied["precision"], applied["recall"], applied["f1"]) == pytest.approx(sk[:3], abs=1e-12)

    phase = m.phase_discrimination_metrics(scores, truth)
    candidates = np.sort(scores)[np.linspace(0, 299, 50, dtype=int)]
    mccs = [skm.matthews_corrcoef(truth, scores > c) for c in candidates]
    assert phase["mcc"] == pytest.approx(max(mccs), abs=1e-12)
    assert phase["mcc_threshold"] == candidates[int(np.argmax(mccs))]
    assert m.phase_discrimination_metrics(scores, truth, mcc_threshold=0.4)["mcc"] == pytest.approx(
        skm.matthews_corrcoef(truth, scores > 0.4), abs=1e-12)


def test_pick_scores_follow_the_benchmark_definitions():
    probs = np.zeros((1, 100, 3))
    probs[0, :, 2] = 1.0
    probs[0, 40, 2] = 0.2
    probs[0, 30, 0] = 0.6
    probs[0, 70, 0] = 0.9  # outside the window below: not seen
    probs[0, 35, 1] = 0.3
    targets = m.PickTargets(*(np.array([v]) for v in (0, 20, 60, True, 0, 20, 60, True, 31.0)))
    scores = m.window_scores(probs, targets)
    assert scores["detection"][0] == pytest.approx(0.8)  # max of 1 - noise in [20, 60)
    assert scores["p_or_s"][0] == pytest.approx(2.0)  # max P / max S
    assert scores["p_pick"][0] == 30 and scores["s_pick"][0] == 35
    probs[0, :, 1] = 0.0
    assert np.isinf(m.window_scores(probs, targets)["p_or_s"][0])  # clipped to 1e100 when scored
    np.testing.assert_array_equal(m.predicted_picks(probs), [[70, 0]])


def test_thresholds_from_a_dev_set_and_missing_classes():
    rng = np.random.default_rng(9)
    probs, p, s = _records(6, 3, 3001, rng, p_shift=0, s_shift=0)
    dev = m.pick_metrics(probs, p, s, 100.0)
    test = m.pick_metrics(probs, p, s, 100.0, thresholds={"detection": dev["detection/threshold"],
                                                          "phase": dev["phase/threshold"],
                                                          "phase_mcc": dev["phase/mcc_threshold"]})
    assert test["detection/threshold"] == dev["detection/threshold"]
    assert test["detection/f1"] < 1.0  # applied with '>' the dev-optimal threshold drops its own event
    with pytest.raises(ValueError, match="unknown thresholds"):
        m.pick_metrics(probs, p, s, 100.0, thresholds={"P": 0.5})
    only_events = m.pick_metrics(probs[:6], p[:6], s[:6], 100.0)
    assert math.isnan(only_events["detection/auc"]) and only_events["detection/num_noise"] == 0
    assert only_events["P/count"] == 6
    with pytest.raises(ValueError, match="one onset sample per record"):
        m.pick_metrics(probs, p[:3], s, 100.0)
    with pytest.raises(ValueError, match=r"\[N, T, 3\]"):
        m.pick_metrics(probs[..., :2], p, s, 100.0)
    with pytest.raises(ValueError, match="both classes"):
        m.detection_metrics([0.1, 0.2], [True, True])


# ------------------------------------------------------------------------------------------------
# Classification, JSON


def test_classification_metrics_match_scikit_learn():
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 4, 200)  # class 4 of 5 never occurs, nor is it predicted
    logits = rng.standard_normal((200, 5)) + 1.5 * np.eye(5)[labels]
    logits[:, 4] = -10
    pred = np.argmax(logits, -1)
    out = m.classification_metrics(logits, labels, 5)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    np.testing.assert_allclose(out["f1"][:4], skm.f1_score(labels, pred, labels=range(4), average=None))
    assert math.isnan(out["f1"][4])
    assert out["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    np.testing.assert_array_equal(out["confusion_matrix"],
                                  skm.confusion_matrix(labels, pred, labels=range(5)))
    with pytest.raises(ValueError, match="labels outside"):
        m.classification_metrics(pred, np.r_[labels[:-1], 7], 5)


def test_metrics_json_is_strict_json():
    out = m.segmentation_metrics(np.array([0, 1]), np.array([0, 0]), 3)
    text = json.dumps(m.to_jsonable(out), allow_nan=False)
    loaded = json.loads(text)
    assert loaded["CPA"] == [0.5, None, None] and loaded["IoU"] == [0.5, 0.0, None]
    assert isinstance(m.to_jsonable(m.regression_metrics(np.ones(SHAPE), np.ones(SHAPE)))["MSE"], float)


# ------------------------------------------------------------------------------------------------
# Figures


def test_downstream_figures_are_written(tmp_path):
    rng = np.random.default_rng(11)
    images = rng.standard_normal((3, 32, 32, 1))
    truths = rng.integers(0, 3, (3, 32, 32))
    truths[0, :4, :4] = 255  # ignored pixels are drawn blank
    logits = rng.standard_normal((3, 32, 32, 3))
    probs, p, s = _records(1, 0, 3001, rng, p_shift=5, s_shift=-5)
    cm = m.confusion_matrix(logits, truths, 3)
    paths = [
        plots.segmentation_grid(images, truths, logits, tmp_path / "seg.png", 3),
        plots.regression_grid(images, 0.5 * images, 0.4 * images, tmp_path / "reg.png"),
        plots.iou_bars(m.segmentation_metrics_from_confusion(np.pad(cm, (0, 1)))["IoU"], tmp_path / "iou.png",
                       ["a", "b", "c", "d"]),
        plots.confusion_matrix_plot(cm, tmp_path / "cm.png"),
        plots.pick_plot(rng.standard_normal((3001, 3)), probs[0], {"P": p[0], "S": s[0]},
                        dict(zip("PS", m.predicted_picks(probs)[0], strict=True)), tmp_path / "pick.png"),
        plots.residual_histograms({"P": rng.normal(0, 0.1, 50), "S": np.array([])}, tmp_path / "res.png"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        plots.iou_bars(np.ones(4), tmp_path / "x.png", ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\[T, 3\] waveform"):
        plots.pick_plot(np.zeros((10, 3)), np.zeros((10, 2)), {}, {}, tmp_path / "x.png")
