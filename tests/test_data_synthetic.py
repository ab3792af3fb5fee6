"""The physics-paired generator: determinism, shapes and labels, and physics that both
modalities share."""

import dataclasses

import numpy as np
import pytest

from seisfuse.data import synthetic as syn


@pytest.fixture(scope="module")
def pairs():
    return [syn.generate_pair(7, i) for i in range(6)]


def test_same_seed_and_index_give_identical_pairs(pairs):
    again = syn.generate_pair(7, 0)
    assert all(np.array_equal(again[k], pairs[0][k]) for k in pairs[0])
    other = syn.generate_pair(8, 0)
    assert not np.array_equal(other["image"], pairs[0]["image"])
    assert not np.array_equal(pairs[1]["waveform"], pairs[0]["waveform"])


def test_shapes_dtypes_and_ranges(pairs):
    for ex in pairs:
        assert ex["image"].shape == (224, 224, 1) and ex["image"].dtype == np.float32
        for key in ("clean", "reflectivity", "trace_mask"):
            assert ex[key].shape == (224, 224, 1) and ex[key].dtype == np.float32
        assert ex["facies"].shape == ex["salt"].shape == (224, 224)
        assert ex["waveform"].shape == (3001, 3) and ex["waveform"].dtype == np.float32
        assert all(np.isfinite(v).all() for v in ex.values())
        assert 0 < ex["p_sample"] < ex["s_sample"] < 3001
        assert 3 <= ex["depth_km"] <= 15 and 2 <= ex["distance_km"] <= 20 and 0.5 <= ex["magnitude"] <= 1
        assert ex["station_trace"] == syn.STATION == 112 and ex["time_domain"] == 1
        assert ex["facies"].max() < syn.N_FACIES and ex["facies"].min() >= 0
        np.testing.assert_array_equal(ex["salt"], ex["facies"] == syn.SALT_ID)
        assert np.abs(ex["waveform"]).max() > 0 and np.abs(ex["image"]).std() > 0


def test_image_labels_are_consistent(pairs):
    for ex in pairs:
        # SFM interpolation mask: 10 of 14 blocks of 16 whole traces kept.
        cols = ex["trace_mask"][0, :, 0]
        assert cols.sum() == 160 and np.all(ex["trace_mask"] == cols[None, :, None])
        assert np.all(cols.reshape(14, 16) == cols.reshape(14, 16)[:, :1])
        # The noisy image is the clean one plus noise at the drawn SNR.
        noise = ex["image"] - ex["clean"]
        assert np.isclose(ex["clean"].std() / noise.std(), ex["image_snr"], rtol=0.05)
        # Reflectivity (on the fixed two-way-time axis) is strongest where the facies change.
        fac = ex["facies"]
        boundary = np.zeros_like(fac, bool)
        boundary[:-1] = fac[1:] != fac[:-1]
        refl = np.abs(ex["reflectivity"][..., 0])
        assert refl[boundary].mean() > 3 * refl[~boundary].mean()


def test_direct_ray_matches_a_straight_line_in_a_uniform_medium():
    thick = np.array([500.0, 1500.0, 8000.0])
    vel = np.full(3, 6000.0)
    p, times = syn.direct_ray(thick, vel, 7000.0)
    assert np.isclose(times.sum(), np.hypot(10000.0, 7000.0) / 6000.0, rtol=1e-6)
    assert np.isclose(p, (7000.0 / np.hypot(10000.0, 7000.0)) / 6000.0, rtol=1e-6)


def test_site_response_of_one_layer_reverberates_at_its_two_way_time():
    f = np.fft.rfftfreq(4096, 0.01)
    h, v, rho, v_half, rho_half = 200.0, 500.0, 1900.0, 3500.0, 2700.0
    resp = syn.site_response(f, np.array([h]), np.array([v]), np.array([rho]), np.array([1e6]),
                             v_half, rho_half)
    pulse = np.fft.irfft(resp, 4096)
    peaks = np.sort(np.argsort(-np.abs(pulse))[:3])
    np.testing.assert_array_equal(peaks, [0, 80, 160])  # 2h/v = 0.8 s = 80 samples
    z1, z2 = rho * v, rho_half * v_half
    assert np.isclose(pulse[0], 2 * 2 * z2 / (z1 + z2), rtol=0.01)  # free surface × transmission
    assert np.isclose(pulse[80] / pulse[0], -(z2 - z1) / (z2 + z1), rtol=0.02)
    assert np.abs(pulse[-300:]).max() < 0.01 * np.abs(pulse[0])  # causal
    bare = syn.site_response(f, np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), v_half, rho_half)
    np.testing.assert_allclose(bare, 2.0)


def test_section_q_lowers_both_the_image_frequency_and_the_record_high_frequencies():
    model = syn.draw_earth_model(np.random.default_rng(11))
    spectra = {}
    for q in (10.0, 120.0):
        m = dataclasses.replace(model, q_factor=q)
        img = syn.render_image(m, np.random.default_rng(1))
        wav = _render_with(m)["waveform"]
        s = (np.abs(np.fft.rfft(wav, axis=0)) ** 2).sum(axis=1)
        f = np.fft.rfftfreq(wav.shape[0], 1 / syn.FS)
        spectra[q] = (float(img["wavelet_hz"]), s[(f > 10) & (f < 25)].sum() / s[(f > 1) & (f < 5)].sum())
    assert spectra[10.0][0] < 0.8 * spectra[120.0][0]
    assert spectra[10.0][1] < 0.2 * spectra[120.0][1]


def _render_with(model, seed=3):
    return syn.render_waveform(model, np.random.default_rng(seed))


def test_seismogram_is_driven_by_the_section_velocities():
    model = syn.draw_earth_model(np.random.default_rng(11))
    base = _render_with(model)
    slow = dataclasses.replace(model, vs=model.vs * 0.7)  # slower shear waves in the section
    slower = _render_with(slow)
    assert slower["s_sample"] - slower["p_sample"] > base["s_sample"] - base["p_sample"]
    # Extra S delay ≈ the vertical S time through the section, Σ dz (1/(0.7 vs) − 1/vs).
    col = model.vs[:, int(base["station_trace"])]
    expected = np.sum(syn.DZ * (1 / (0.7 * col) - 1 / col)) * syn.FS
    got = (slower["s_sample"] - slower["p_sample"]) - (base["s_sample"] - base["p_sample"])
    assert 0.8 * expected - 1 <= got <= 1.05 * expected + 1
    # S−P grows with hypocentral distance through the crust, as (1/vs − 1/vp)·R roughly.
    r = np.hypot(base["depth_km"], base["distance_km"]) * 1000.0
    crust = r * (1 / model.crust_vs - 1 / model.crust_vp) * syn.FS
    assert 0.8 * crust <= base["s_sample"] - base["p_sample"] <= 1.6 * crust + 100


def test_waveform_energy_starts_at_the_p_pick():
    for i in range(4):
        ex = syn.generate_pair(5, i)
        p = int(ex["p_sample"])
        hf = np.abs(np.diff(ex["waveform"], axis=0)).sum(axis=1)  # high-pass: removes microseisms
        before, after = hf[max(0, p - 150) : p - 5].mean(), hf[p : p + 100].mean()
        assert after > before, (i, before, after)


def test_plot_pairs_writes_a_png(tmp_path):
    path = tmp_path / "pairs.png"
    syn.plot_pairs(str(path), seed=0, n=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
