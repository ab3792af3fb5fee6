"""Normalisations (SFM, SeisLM), windows, pick labels and pair-consistent augmentation."""

import numpy as np
import pytest

from seisfuse.data import transforms as tf


def test_zscore_image_is_sfm_normalisation():
    x = np.random.default_rng(0).normal(3.0, 5.0, (224, 224, 1))
    z = tf.zscore_image(x)
    np.testing.assert_allclose(z, (x - x.mean()) / (x.std() + 1e-6), rtol=1e-5, atol=1e-5)
    assert z.dtype == np.float32
    assert np.all(tf.zscore_image(np.full((8, 8, 1), 4.0)) == 0)  # constant patch: zeros, not NaN


def test_normalize_waveform_is_seislm_normalisation_and_survives_dead_channels():
    w = np.random.default_rng(1).normal(2.0, 7.0, (3001, 3))
    w[:, 2] = 5.0  # dead channel
    out = tf.normalize_waveform(w)
    np.testing.assert_allclose(out[:, :2].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, :2].std(axis=0), 1, atol=1e-5)
    assert np.all(out[:, 2] == 0) and np.isfinite(out).all()


def test_pick_labels_gaussians_and_noise():
    y = tf.pick_labels(1000, 1500)
    assert y.shape == (3001, 3) and y.dtype == np.float32
    assert y[1000, 0] == pytest.approx(1.0) and y[1500, 1] == pytest.approx(1.0)
    assert y[1020, 0] == pytest.approx(np.exp(-0.5), rel=1e-6)  # sigma = 20 samples
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
    assert y[0, 2] == pytest.approx(1.0)
    missing = tf.pick_labels(np.nan, None)
    assert np.all(missing[:, :2] == 0) and np.all(missing[:, 2] == 1)
    overlap = tf.pick_labels(100, 105)
    assert overlap[:, 2].min() == 0.0 and np.all(overlap >= 0)


def test_random_window_keeps_picks_and_moves_them_with_the_data():
    rng = np.random.default_rng(2)
    w = np.zeros((6000, 3), np.float32)
    w[2500, 0], w[3200, 1] = 1.0, 1.0
    for _ in range(20):
        out, picks = tf.random_window(w, rng, picks={"p": 2500.0, "s": 3200.0})
        assert out.shape == (3001, 3)
        p, s = int(picks["p"]), int(picks["s"])
        assert 100 <= p and s < 3001 - 100
        assert out[p, 0] == 1.0 and out[s, 1] == 1.0
    record = np.zeros((1000, 3), np.float32)
    record[500, 2] = 1.0
    short, picks = tf.random_window(record, rng, picks={"p": 500.0})
    assert short.shape == (3001, 3) and short[int(picks["p"]), 2] == 1.0 and short.sum() == 1.0
    _, missing = tf.random_window(w, rng, picks={"p": np.nan})
    assert np.isnan(missing["p"])


def _radial_p_pair(baz_deg: float) -> dict:
    """A pair whose waveform holds one P pulse polarised along the back-azimuth."""
    b = np.deg2rad(baz_deg)
    w = np.zeros((3001, 3), np.float32)
    w[1000] = [1.0, -np.cos(b) * 0.5, -np.sin(b) * 0.5]  # radial points away from the source
    image = np.random.default_rng(3).normal(size=(224, 224, 1)).astype(np.float32)
    facies = np.tile(np.arange(224, dtype=np.int32), (224, 1))
    return {
        "image": image,
        "facies": facies,
        "trace_mask": np.ones((224, 224, 1), np.float32),
        "waveform": w,
        "p_sample": np.int32(1000),
        "s_sample": np.int32(1400),
        "back_azimuth": np.float32(baz_deg),
        "station_trace": np.int32(30),
    }


def test_augment_pair_keeps_the_shared_physics():
    rng = np.random.default_rng(4)
    for _ in range(20):
        ex = _radial_p_pair(40.0)
        out = tf.augment_pair(ex, rng)
        flipped = out["image"][0, 0, 0] != ex["image"][0, 0, 0]
        if flipped:
            np.testing.assert_array_equal(out["image"], ex["image"][:, ::-1])
            np.testing.assert_array_equal(out["facies"], ex["facies"][:, ::-1])
            assert out["station_trace"] == 223 - 30
        else:
            assert out["station_trace"] == 30
        p = int(out["p_sample"])
        assert out["s_sample"] - p == 400  # picks move together with the window
        z, n, e = out["waveform"][p]
        assert abs(z) == pytest.approx(1.0)
        # The horizontal particle motion still points along the (updated) back-azimuth.
        b = np.deg2rad(float(out["back_azimuth"]))
        sign = np.sign(z)
        np.testing.assert_allclose([n, e], sign * 0.5 * np.array([-np.cos(b), -np.sin(b)]), atol=1e-5)
        assert np.count_nonzero(out["waveform"]) == 3


def test_p_window_puts_the_pick_at_a_fixed_sample_and_pads_outside_the_record():
    w = np.zeros((3001, 3), np.float32)
    w[1200, 0], w[10, 1] = 1.0, 2.0
    cut = tf.p_window(w, 1200, before=50, length=512)
    assert cut.shape == (512, 3) and cut[50, 0] == 1.0 and cut.sum() == 1.0
    early = tf.p_window(w, 20, before=50, length=512)  # starts 30 samples before the record
    assert early[40, 1] == 2.0 and np.all(early[:30] == 0)
    for bad in (np.nan, -1, None):
        with pytest.raises(ValueError, match="needs a P pick"):
            tf.p_window(w, bad, before=50, length=512)
    with pytest.raises(ValueError, match="before < length"):
        tf.p_window(w, 1200, before=512, length=512)


def test_p_windows_point_the_first_motion_up_whatever_the_source_polarity():
    w = np.zeros((3001, 3), np.float32)
    w[1198:1202, 0] = [0.1, -1.0, -0.3, 0.2]  # a downward first swing at the pick (1200 ± 2)
    w[1260, 0], w[1230, 1] = 0.4, 0.5  # a later reverberation and a horizontal arrival
    cut = tf.p_window(w, 1200, before=50, length=512)
    np.testing.assert_array_equal(cut, -tf.window(w, 1150, 512))  # flipped: first motion now up
    assert cut[49, 0] == 1.0 and cut[110, 0] == -0.4  # the reverberation keeps its relative sign
    np.testing.assert_array_equal(tf.p_window(-w, 1200, before=50, length=512), cut)
    np.testing.assert_array_equal(tf.normalized_p_window(-w, 1200, 50, 512),
                                  tf.normalized_p_window(w, 1200, 50, 512))
    # A raw record's offset does not decide the sign, nor does a swing outside FIRST_MOTION (here
    # 30 samples after the pick).
    np.testing.assert_allclose(tf.normalized_p_window(w + 100.0, 1200, 50, 512),
                               tf.normalized_p_window(w, 1200, 50, 512), atol=1e-3)
    late = np.zeros_like(w)
    late[1201, 0], late[1230, 0] = 0.2, -5.0
    assert tf.p_window(late, 1200, before=50, length=512)[51, 0] == 0.2
