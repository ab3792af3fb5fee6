"""Mel spectrograms in JAX: the waveform-as-image path that lets SFM see a seismogram.

`melspectrogram` reproduces `librosa.feature.melspectrogram` (librosa 0.11 defaults: periodic Hann
window of length n_fft, zero ("constant") centre padding, Slaney mel scale, Slaney area
normalisation) for any leading batch shape, under `jax.jit`. `power_to_db` follows
`librosa.power_to_db`. `mel_image` is the preset that turns a [3001, 3] window at 100 Hz into a
224×224 single-channel SFM image.

Why these preset values (`SFM_MEL`): librosa's default hop (512) leaves 6 frames for 30 s at
100 Hz. A 2.56 s window (n_fft=256, 0.39 Hz bins) still separates P from S for S−P ≳ 1.5 s,
and hop 13 (0.13 s) gives 231 frames of which the first 224 are kept: frame j is centred on
sample 13·j and frame 223 spans samples 2771–3026, so the whole window is still seen. Below
1 kHz the Slaney mel scale is linear, so at 100 Hz the 224 mel rows are evenly spaced triangles
(0.22 Hz apart) over 0–50 Hz that interpolate the 129 FFT bins (none is empty); a 5.12 s window
(n_fft=512) would give two bins per filter but smear P and S of nearby events together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from seisfuse.data.transforms import SAMPLING_RATE


def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / log_step)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    m = np.asarray(m, np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp(log_step * (m - 15.0)))


@functools.lru_cache(maxsize=32)
def mel_filterbank(
    sr: float, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular Slaney-normalised filters [n_mels, n_fft // 2 + 1], float32 as librosa stores them."""
    fmax = sr / 2.0 if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax <= sr / 2.0:
        raise ValueError(f"need 0 <= fmin < fmax <= sr/2, got fmin={fmin}, fmax={fmax}, sr={sr}")
    fft_hz = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - left) / (centre - left)
    falling = (right - fft_hz) / (right - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= 2.0 / (right - left)  # Slaney: each filter has unit area in Hz
    return weights.astype(np.float32)


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy's get_window('hann', n), used by librosa)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def frame(y: jax.Array, n_fft: int, hop_length: int) -> jax.Array:
    """Overlapping frames [..., n_frames, n_fft] of y [..., T] (T ≥ n_fft), without a gather.

    y is cut into hop-sized blocks and each frame is the concatenation of ceil(n_fft / hop)
    consecutive blocks, so XLA only sees static slices (a gather is several times slower on CPU).
    """
    n_samples = y.shape[-1]
    n_frames = 1 + (n_samples - n_fft) // hop_length
    k = -(-n_fft // hop_length)
    n_blocks = n_frames + k - 1
    needed = n_blocks * hop_length
    pad = [(0, 0)] * (y.ndim - 1) + [(0, max(0, needed - n_samples))]
    blocks = jnp.pad(y, pad)[..., :needed].reshape(y.shape[:-1] + (n_blocks, hop_length))
    stacked = jnp.stack([blocks[..., i : i + n_frames, :] for i in range(k)], axis=-2)
    return stacked.reshape(y.shape[:-1] + (n_frames, k * hop_length))[..., :n_fft]


def stft_power(
    y: jax.Array, *, n_fft: int, hop_length: int, power: float = 2.0, center: bool = True
) -> jax.Array:
    """|STFT|^power of float y [..., T] → [..., frames, n_fft // 2 + 1] (frames first)."""
    if center:
        pad = [(0, 0)] * (y.ndim - 1) + [(n_fft // 2, n_fft // 2)]
        y = jnp.pad(y, pad)
    if y.shape[-1] < n_fft:
        raise ValueError(f"signal of {y.shape[-1]} samples (after padding) is shorter than n_fft={n_fft}")
    spec = jnp.fft.rfft(frame(y, n_fft, hop_length) * _hann(n_fft).astype(y.dtype), axis=-1)
    energy = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    if power == 2.0:
        return energy
    if power == 1.0:
        return jnp.sqrt(energy)
    return energy ** (power / 2.0)


@functools.partial(
    jax.jit, static_argnames=("sr", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "power", "center")
)
def _mel_power(
    y: jax.Array,
    *,
    sr: float,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float,
    fmax: float | None,
    power: float,
    center: bool,
) -> jax.Array:
    spec = stft_power(y, n_fft=n_fft, hop_length=hop_length, power=power, center=center)
    basis = jnp.asarray(mel_filterbank(sr, n_fft, n_mels, fmin, fmax), spec.dtype)
    return jnp.einsum("mf,...tf->...mt", basis, spec, precision=jax.lax.Precision.HIGHEST)


def melspectrogram(
    y: jax.Array,
    *,
    sr: float,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    power: float = 2.0,
    center: bool = True,
    fft_dtype: str | None = None,
) -> jax.Array:
    """Mel spectrogram of y [..., T] → [..., n_mels, frames], as `librosa.feature.melspectrogram`.

    Works eagerly, under `jax.jit` and `jax.vmap`. Non-positive sizes raise ValueError; so do
    NaN/inf or complex samples when y is a concrete array (a traced y cannot be inspected).
    The STFT runs in float64 (`fft_dtype=None`
    picks float64 except on TPU, which has no float64 FFT): a float32 FFT has an error floor near
    3e-7 of each frame's peak power, which is a ~2e-4 relative error on bins 60 dB down, above
    the 1e-4 librosa bound for steep seismic spectra. The result is float32 unless y is float64.
    """
    for name, value in (("n_fft", n_fft), ("hop_length", hop_length), ("n_mels", n_mels)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (np.isfinite(sr) and sr > 0):
        raise ValueError(f"sr must be a positive sampling rate, got {sr!r}")
    if not (np.isfinite(power) and power > 0):
        raise ValueError(f"power must be positive (2 for power, 1 for magnitude), got {power!r}")
    if not isinstance(y, jax.core.Tracer):  # values of a traced y are unknown until it runs
        xp = jnp if isinstance(y, jax.Array) else np  # a device array is checked where it lives
        values = xp.asarray(y)
        if not (jnp.issubdtype(values.dtype, jnp.integer) or jnp.issubdtype(values.dtype, jnp.floating)):
            raise ValueError(f"y must hold real numbers, got dtype {values.dtype}")
        bad = values.size - int(xp.count_nonzero(xp.isfinite(values)))
        if bad:
            raise ValueError(f"y holds {bad} NaN/inf values: a spectrogram of them is NaN throughout")
    if fft_dtype is None:
        fft_dtype = "float32" if jax.default_backend() == "tpu" else "float64"
    if fft_dtype not in ("float32", "float64"):
        raise ValueError(f"fft_dtype must be 'float32' or 'float64', got {fft_dtype!r}")
    kwargs = dict(
        sr=float(sr),
        n_fft=int(n_fft),
        hop_length=int(hop_length),
        n_mels=int(n_mels),
        fmin=float(fmin),
        fmax=None if fmax is None else float(fmax),
        power=float(power),
        center=bool(center),
    )
    scope = jax.enable_x64(True) if fft_dtype == "float64" else contextlib.nullcontext()
    with scope:
        y = jnp.asarray(y)
        out_dtype = jnp.float64 if y.dtype == jnp.float64 else jnp.float32
        return _mel_power(y.astype(fft_dtype), **kwargs).astype(out_dtype)


def power_to_db(
    s: jax.Array,
    *,
    ref: float | Callable[[jax.Array], jax.Array] = 1.0,
    amin: float = 1e-10,
    top_db: float | None = 80.0,
) -> jax.Array:
    """10·log10(S / ref) clipped at amin and at top_db below the peak (librosa semantics).

    As in librosa, a callable ref (e.g. `jnp.max`) and the top_db peak are taken over the whole
    array given; `jax.vmap` it for per-example references.
    """
    if amin <= 0:
        raise ValueError("amin must be strictly positive")
    s = jnp.asarray(s)
    ref_value = ref(s) if callable(ref) else ref
    log_spec = 10.0 * jnp.log10(jnp.maximum(amin, s))
    log_spec = log_spec - 10.0 * jnp.log10(jnp.maximum(amin, jnp.abs(ref_value)))
    if top_db is not None:
        if top_db < 0:
            raise ValueError("top_db must be non-negative")
        log_spec = jnp.maximum(log_spec, jnp.max(log_spec) - top_db)
    return log_spec


@dataclasses.dataclass(frozen=True)
class MelPreset:
    """Arguments of `melspectrogram` plus the image side they are meant to fill."""

    sr: float = SAMPLING_RATE
    n_fft: int = 256
    hop_length: int = 13
    n_mels: int = 224
    fmin: float = 0.0
    fmax: float | None = 50.0
    frames: int = 224
    top_db: float = 80.0

    def mel_kwargs(self) -> dict:
        return dict(
            sr=self.sr,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            fmin=self.fmin,
            fmax=self.fmax,
        )


SFM_MEL = MelPreset()


@functools.partial(jax.jit, static_argnames=("preset",))
def mel_image(waveforms: jax.Array, preset: MelPreset = SFM_MEL) -> jax.Array:
    """Waveforms [..., T, C] (T = 3001 at 100 Hz) → z-scored log-mel images [..., n_mels, frames, 1].

    The mel power is summed over the components (rotation invariant, shows P on Z and S on the
    horizontals), converted to dB below each image's peak (top_db 80), cropped to `preset.frames`
    frames, and z-scored per image as SFM expects. Row i is mel bin i (row 0 = lowest frequency),
    column j is centred on sample hop_length·j.
    """
    if waveforms.ndim < 2:
        raise ValueError(f"expected waveforms [..., T, C], got shape {waveforms.shape}")
    y = jnp.moveaxis(jnp.asarray(waveforms, jnp.float32), -1, -2)  # [..., C, T]
    power = melspectrogram(y, **preset.mel_kwargs()).sum(axis=-3)  # [..., n_mels, frames]
    if power.shape[-1] < preset.frames:
        raise ValueError(
            f"{waveforms.shape[-2]} samples give {power.shape[-1]} frames, "
            f"need {preset.frames} (T = 3001 at 100 Hz for the SFM preset)"
        )
    power = power[..., : preset.frames]
    lead = power.shape[:-2]
    flat = power.reshape((-1,) + power.shape[-2:])
    db = jax.vmap(lambda p: power_to_db(p, ref=jnp.max, top_db=preset.top_db))(flat)
    mean = db.mean(axis=(-2, -1), keepdims=True)
    std = db.std(axis=(-2, -1), keepdims=True)
    image = (db - mean) / (std + 1e-6)
    return image.reshape(lead + image.shape[-2:] + (1,))
