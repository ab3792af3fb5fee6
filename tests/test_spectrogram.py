"""JAX Mel spectrogram vs librosa (the public contract), power_to_db, and the SFM image preset."""

import warnings

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import obspy
import pytest

from seisfuse.data.spectrogram import SFM_MEL, mel_filterbank, mel_image, melspectrogram, power_to_db


def _event() -> np.ndarray:
    """obspy's bundled real 3-component record, [3, 3000] float32."""
    return np.stack([tr.data for tr in obspy.read()]).astype(np.float32)


def _max_rel_error(out, ref, floor=1e-6):
    mask = ref > floor * ref.max()
    return float(np.max(np.abs(np.asarray(out, np.float64) - ref)[mask] / ref[mask]))


CASES = [
    dict(sr=100, n_fft=256, hop_length=13, n_mels=224, fmax=50.0),
    dict(sr=100, n_fft=128, hop_length=32, n_mels=40, fmin=1.0, fmax=45.0, power=1.0),
    dict(sr=100, n_fft=200, hop_length=50, n_mels=64, center=False, power=1.5),
    dict(sr=22050, n_fft=2048, hop_length=512, n_mels=128),  # librosa defaults
]


@pytest.mark.parametrize("kwargs", CASES)
def test_matches_librosa_on_a_real_event(kwargs):
    y = _event()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns about n_fft > len for the last case only
        ref = librosa.feature.melspectrogram(y=y.astype(np.float64), **kwargs)
    out = melspectrogram(jnp.asarray(y), **kwargs)
    assert out.shape == ref.shape and out.dtype == jnp.float32
    assert _max_rel_error(out, ref) <= 1e-4


def test_batched_jit_and_vmap_agree():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 3, 3001)).astype(np.float32)
    kw = SFM_MEL.mel_kwargs()
    eager = np.asarray(melspectrogram(y, **kw))
    jitted = np.asarray(jax.jit(lambda a: melspectrogram(a, **kw))(y))
    mapped = np.asarray(jax.vmap(lambda a: melspectrogram(a, **kw))(y))
    ref = librosa.feature.melspectrogram(y=y.astype(np.float64), **kw)
    assert eager.shape == (2, 3, 224, 231)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(mapped, eager, rtol=1e-6)
    assert _max_rel_error(eager, ref) <= 1e-4


def test_float32_fft_is_close_but_not_exact():
    y = _event()
    kw = SFM_MEL.mel_kwargs()
    ref = librosa.feature.melspectrogram(y=y.astype(np.float64), **kw)
    out = melspectrogram(y, fft_dtype="float32", **kw)
    assert _max_rel_error(out, ref, floor=1e-3) <= 1e-4
    with pytest.raises(ValueError, match="fft_dtype"):
        melspectrogram(y, fft_dtype="float16", **kw)


@pytest.mark.parametrize(
    "args", [(100.0, 256, 224, 0.0, 50.0), (22050.0, 2048, 128, 0.0, None), (100.0, 512, 64, 2.0, 40.0)]
)
def test_filterbank_matches_librosa(args):
    sr, n_fft, n_mels, fmin, fmax = args
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_allclose(mel_filterbank(sr, n_fft, n_mels, fmin, fmax), ref, rtol=1e-5, atol=1e-9)


def test_bad_frequency_range_is_rejected():
    with pytest.raises(ValueError, match="fmax"):
        mel_filterbank(100.0, 256, 64, 0.0, 80.0)


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(ref=np.max), dict(ref=0.5, top_db=None), dict(amin=1e-5, top_db=40.0)]
)
def test_power_to_db_matches_librosa(kwargs):
    s = np.abs(np.random.default_rng(1).standard_normal((64, 50))) ** 4
    ours = dict(kwargs)
    if ours.get("ref") is np.max:
        ours["ref"] = jnp.max
    np.testing.assert_allclose(
        power_to_db(jnp.asarray(s), **ours), librosa.power_to_db(s, **kwargs), rtol=1e-5, atol=1e-4
    )


def test_mel_image_preset_gives_sfm_images_aligned_in_time():
    rng = np.random.default_rng(2)
    w = 0.01 * rng.standard_normal((2, 3001, 3)).astype(np.float32)
    w[0, 1500:1530, 0] += np.sin(np.arange(30) * 2 * np.pi * 10 / 100)  # 10 Hz burst at sample 1500
    img = np.asarray(mel_image(w))
    assert img.shape == (2, 224, 224, 1) and img.dtype == np.float32
    np.testing.assert_allclose(img.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(img.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
    column = int(np.argmax(img[0, :, :, 0].max(axis=0)))
    assert abs(column - 1515 / SFM_MEL.hop_length) <= 3  # column j is centred on sample 13·j
    row = int(np.argmax(img[0, :, column, 0]))
    assert abs(row - 10.0 / (50.0 / 225)) <= 6  # 0.22 Hz per mel row below 1 kHz
    with pytest.raises(ValueError, match="frames"):
        mel_image(w[:, :2000])
