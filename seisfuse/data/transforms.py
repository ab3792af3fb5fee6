"""Per-example numpy transforms: the normalisations SFM and SeisLM were trained with, windows,
pick labels, augmentations that keep an image/waveform pair physically consistent, and the
fine-tuning pieces (SeisLM's phase-picking windows, regression targets, class labels).

Everything here takes and returns numpy arrays (host side, inside grain workers) and draws its
randomness from an explicit `np.random.Generator`.
"""

from __future__ import annotations

import numpy as np

# The one home of the waveform conventions every model, reader and task shares (SeisLM's SeisBench
# windows): samples per window and their rate in Hz (readers resample to it).
WINDOW = 3001
SAMPLING_RATE = 100.0
PICK_SIGMA = 20.0  # samples, SeisLM's phase-picking labels
FIRST_MOTION = (5, 20)  # samples before and after a P pick that hold the direct P's first swing
AROUND_PICK = 3000  # SeisLM's picking pre-cut: samples kept before (and after) the chosen pick
# Class labels derived from the synthetic metadata: equal bins of the generator's ranges.
DISTANCE_EDGES_KM = (2.0, 6.5, 11.0, 15.5, 20.0)  # distance_class 0..3
MAGNITUDE_EDGES = (0.5, 0.75, 1.0)  # magnitude_class 0..1
DERIVED_CLASSES = {
    "distance_class": ("distance_km", DISTANCE_EDGES_KM),
    "magnitude_class": ("magnitude", MAGNITUDE_EDGES),
}
# Regression targets by label key, and the SFM task each one is.
REGRESS_TARGETS = {"clean": "denoising", "reflectivity": "reflectivity inversion", "image": "interpolation"}


def zscore_image(image: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """SFM's per-image normalisation (x − mean) / (std + 1e-6), float32."""
    image = np.asarray(image, np.float32)
    return ((image - image.mean()) / (image.std() + eps)).astype(np.float32)


def normalize_waveform(waveform: np.ndarray) -> np.ndarray:
    """SeisLM's per-channel normalisation of [T, C]: demean, divide by std + 1e-10 (std 0 → 1).

    A dead (constant) channel becomes zeros instead of dividing by zero.
    """
    w = np.asarray(waveform, np.float32)
    w = w - w.mean(axis=0, keepdims=True)
    std = w.std(axis=0, keepdims=True)
    return (w / (np.where(std == 0, 1.0, std) + 1e-10)).astype(np.float32)


def window(waveform: np.ndarray, start: int, length: int = WINDOW) -> np.ndarray:
    """Samples [start, start + length) of [T, C]; parts outside the record are zero-padded."""
    t, c = waveform.shape
    out = np.zeros((length, c), np.float32)
    lo, hi = max(start, 0), min(start + length, t)
    if hi > lo:
        out[lo - start : hi - start] = waveform[lo:hi]
    return out


def p_window(waveform: np.ndarray, p_sample: float, before: int, length: int) -> np.ndarray:
    """The `length` samples of [T, C] that start `before` samples ahead of the P pick, first motion up.

    Aligning on P puts the onset and the P coda (the site's reverberations) at fixed positions, as
    pick-centred windows do in SeisBench-style training; zero-padded where it leaves the record.
    The sign is set by `first_motion_up`, so the window does not depend on the source's polarity.
    """
    if p_sample is None or not np.isfinite(p_sample) or p_sample < 0:
        raise ValueError(f"a P-aligned window needs a P pick (sample index >= 0), got {p_sample!r}")
    if not 0 <= before < length:
        raise ValueError(f"need 0 <= before < length, got before={before}, length={length}")
    return first_motion_up(window(waveform, int(round(float(p_sample))) - before, length), before)


def first_motion_up(waveform: np.ndarray, onset: int) -> np.ndarray:
    """[T, C] times the sign of its largest vertical (channel 0) excursion in FIRST_MOTION around
    sample `onset`, measured from the window's mean (a raw record's offset does not count): the
    direct P then points up, whatever the source mechanism.

    A source's polarity flips the whole record, direct P and its reverberations alike; their
    relative signs are what the site shares with the image. Flipping every window to a positive
    first motion keeps those relative signs and leaves a read-out linear in the samples, where
    learning polarity invariance would need products of samples (an autocorrelation).
    """
    lo, hi = FIRST_MOTION
    z = waveform[max(onset - lo, 0):onset + hi, 0] - waveform[:, 0].mean()
    if z[np.argmax(np.abs(z))] < 0:  # never empty: 0 <= onset < length
        return -waveform
    return waveform


def normalized_p_window(waveform: np.ndarray, p_sample: float, before: int, length: int) -> np.ndarray:
    """A P-aligned window normalised as SeisLM expects: what a P-window run's tower reads."""
    return normalize_waveform(p_window(waveform, p_sample, before, length))


def random_window(
    waveform: np.ndarray,
    rng: np.random.Generator,
    length: int = WINDOW,
    picks: dict[str, float] | None = None,
    margin: int = 100,
    max_pad: int = 0,
) -> tuple[np.ndarray, dict[str, float]]:
    """Random `length`-sample window of [T, C], zero-padded where it leaves the record.

    The start is drawn in [min(0, T − length) − max_pad, max(0, T − length) + max_pad]. With
    picks (sample indices; None/NaN = missing) only windows keeping every valid pick at least
    `margin` samples inside are drawn; if none exists the first pick is put at `margin`.
    Returns the window and the picks shifted into it.
    """
    t = waveform.shape[0]
    lo, hi = min(0, t - length) - max_pad, max(0, t - length) + max_pad
    valid = [p for p in (picks or {}).values() if p is not None and np.isfinite(p)]
    if valid:
        lo = max(lo, int(np.ceil(max(valid))) + margin - length + 1)
        hi = min(hi, int(np.floor(min(valid))) - margin)
        if lo > hi:
            lo = hi = int(np.floor(min(valid))) - margin
    start = int(rng.integers(lo, hi + 1))
    shifted = {
        k: (v - start if v is not None and np.isfinite(v) else np.nan) for k, v in (picks or {}).items()
    }
    return window(waveform, start, length), shifted


def pick_labels(
    p_sample: float | None, s_sample: float | None, length: int = WINDOW, sigma: float = PICK_SIGMA
) -> np.ndarray:
    """[length, 3] targets (P, S, Noise): Gaussians of std `sigma` at the picks, noise = 1 − P − S.

    A missing pick (None or NaN) gives an all-zero channel; noise is clipped at 0 where P and S
    overlap.
    """
    t = np.arange(length, dtype=np.float64)
    channels = []
    for pick in (p_sample, s_sample):
        if pick is None or not np.isfinite(pick):
            channels.append(np.zeros(length))
        else:
            channels.append(np.exp(-0.5 * ((t - float(pick)) / sigma) ** 2))
    noise = np.clip(1.0 - channels[0] - channels[1], 0.0, 1.0)
    return np.stack(channels + [noise], axis=-1).astype(np.float32)


def augment_pair(example: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Augment an image/waveform pair without breaking the physics they share.

    - image left-right flip (labels and the station trace flip with it; the station's column,
      hence the seismogram, is unchanged);
    - rotation of the horizontal components by a random angle (the section carries no azimuth;
      the back-azimuth label turns with them);
    - polarity flip of all three components (source mechanism sign);
    - a random time shift of the 3001-sample window (picks move with it).
    Not done: image polarity flips or vertical shifts, which would change the reflectivity signs
    and the reflector times that the converted phases encode.
    """
    out = dict(example)
    if rng.random() < 0.5:
        for key in ("image", "clean", "reflectivity", "facies", "salt", "trace_mask"):
            if key in out:
                out[key] = np.ascontiguousarray(out[key][:, ::-1])
        if "station_trace" in out:
            out["station_trace"] = np.int32(out["image"].shape[1] - 1 - int(out["station_trace"]))
    w = np.asarray(out["waveform"], np.float32)
    angle = rng.uniform(0.0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    north, east = w[:, 1] * c - w[:, 2] * s, w[:, 1] * s + w[:, 2] * c
    w = np.stack([w[:, 0], north, east], axis=-1) * rng.choice([-1.0, 1.0])
    if "back_azimuth" in out:
        # Horizontal vectors turn by +angle (from N towards E), and so does every azimuth.
        out["back_azimuth"] = np.float32((float(out["back_azimuth"]) + np.degrees(angle)) % 360.0)
    picks = {k: float(out[k]) for k in ("p_sample", "s_sample") if k in out}
    w, picks = random_window(w, rng, w.shape[0], picks, max_pad=300)
    out["waveform"] = w.astype(np.float32)
    for k, v in picks.items():
        out[k] = np.int32(round(v)) if np.isfinite(v) else np.int32(-1)
    return out


def seislm_pick_window(
    waveform: np.ndarray, picks: dict[str, float], rng: np.random.Generator, length: int = WINDOW
) -> tuple[np.ndarray, dict[str, float]]:
    """SeisLM's phase-picking training window of [T, C] (its SeisBench augmentation chain).

    With probability 2/3 the record is first cut to [pick − 3000, pick + 3000) around one
    present pick chosen at random (sample 3000 when none is present; clipped to the record, as
    SeisBench's "variable" strategy), otherwise it is kept whole. Then a `length`-sample window
    starts uniformly anywhere in what is left (picks may fall outside it: noise windows are part
    of the training); a shorter record is zero-padded on a random side split. Returns the window
    and the picks shifted into it (NaN stays NaN).
    """
    valid = [float(v) for v in picks.values() if v is not None and np.isfinite(v)]
    lo, hi = 0, waveform.shape[0]
    if rng.random() < 2.0 / 3.0:
        anchor = valid[int(rng.integers(len(valid)))] if valid else float(AROUND_PICK)
        cut = int(anchor - AROUND_PICK)
        lo, hi = max(cut, 0), min(max(cut + 2 * AROUND_PICK, 0), hi)
    span = max(hi - lo, 0)
    # A short remainder is padded on a random split of both ends: start drawn in [span - length, 0].
    offset = int(rng.integers(min(0, span - length), max(0, span - length) + 1))
    start = lo + offset
    out = window(waveform[lo:hi], offset, length)
    shifted = {k: (float(v) - start if v is not None and np.isfinite(v) else np.nan)
               for k, v in picks.items()}
    return out, shifted


def fill_dead_channels(waveform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SeisLM's FillMissingComponents: each dead (constant) channel of [T, C] becomes a copy of a
    randomly chosen live one; all live or all dead is returned unchanged."""
    std = np.asarray(waveform).std(axis=0)
    dead, live = np.flatnonzero(std == 0), np.flatnonzero(std != 0)
    if dead.size == 0 or live.size == 0:
        return waveform
    out = np.array(waveform, np.float32)
    for c in dead:
        out[:, c] = out[:, live[int(rng.integers(live.size))]]
    return out


def flip_lr(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The same left-right (trace axis, axis 1) flip of an image and its label maps."""
    return tuple(np.ascontiguousarray(np.asarray(a)[:, ::-1]) for a in arrays)


def regression_pair(image: np.ndarray, target: np.ndarray, label_key: str,
                    eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) of an SFM regression task, both float32 [H, W, C], normalised per task.

    - "clean" (denoising): both divided by the INPUT's statistics, (x − mean(x)) / (std(x) + eps),
      so the target stays on the input's scale and input − target is exactly the (scaled) noise.
    - "reflectivity" (inversion): each z-scored by its own mean and std + 1e-6, as SFM's ReflectSet.
    - "image" (interpolation): the z-scored image is input and target; the task masks traces.
    """
    if label_key not in REGRESS_TARGETS:
        raise ValueError(f"regress label_key {label_key!r} is not one of {tuple(REGRESS_TARGETS)} "
                         "(denoising, reflectivity inversion, interpolation)")
    x = np.asarray(image, np.float32)
    y = np.asarray(target, np.float32)
    x, y = (a[..., None] if a.ndim == 2 else a for a in (x, y))
    if y.shape[:2] != x.shape[:2]:
        raise ValueError(f"regress target {label_key!r} has shape {y.shape}, the image {x.shape}")
    if label_key == "clean":
        mean, std = x.mean(), x.std() + eps
        return ((x - mean) / std).astype(np.float32), ((y - mean) / std).astype(np.float32)
    if label_key == "reflectivity":
        return zscore_image(x, eps), zscore_image(y, eps)
    z = zscore_image(x, eps)
    return z, z.copy()


def class_label(example: dict, key: str) -> np.int32:
    """The integer class `example[key]`, or a class derived from the synthetic metadata
    (DERIVED_CLASSES: distance_class from distance_km, magnitude_class from magnitude)."""
    if key in example:
        value = np.asarray(example[key])
        if value.ndim != 0 or not np.isfinite(value) or value != np.round(value) or value < 0:
            raise ValueError(f"class label {key!r} must be one integer >= 0, got {value!r}")
        return np.int32(value)
    if key not in DERIVED_CLASSES:
        raise ValueError(f"no class label {key!r} in the example (it has {sorted(example)}); derived "
                         f"classes {sorted(DERIVED_CLASSES)} need their metadata")
    source, edges = DERIVED_CLASSES[key]
    if source not in example:
        raise ValueError(f"{key} is derived from {source!r}, which the example lacks "
                         f"(it has {sorted(example)})")
    value = float(example[source])
    if not edges[0] <= value <= edges[-1]:
        raise ValueError(f"{source} = {value:g} lies outside [{edges[0]:g}, {edges[-1]:g}], the range "
                         f"binned into {key} (the synthetic generator's range)")
    return np.int32(min(np.searchsorted(edges, value, side="right") - 1, len(edges) - 2))
