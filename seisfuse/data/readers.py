"""Readers for the formats real seismic data comes in, each returning seisfuse's conventions.

- SEG-Y sections (segyio) → [samples, traces] arrays and z-scored 224×224 SFM patches.
- SFM's headerless float32 `.dat` patches.
- Anything obspy reads (miniSEED, SAC, ...) → [3001, 3] windows at 100 Hz in Z, N, E order.
- SeisBench datasets (metadata.csv + waveforms.hdf5) through seisbench's own classes, with picks.

Bad input raises `SeismicDataError` naming the file and the problem. The only repairs, all
documented where they happen: resampling to 100 Hz, Z/1/2 → Z/N/E, merging of split records,
and missing or dead (all-zero) components filled as SeisLM / SeisBench do ("zeros", their
"pad"); every repair of a recorded trace emits a `RepairWarning`.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np

SAMPLING_RATE = 100.0
WINDOW = 3001
COMPONENTS = "ZNE"
_COMPONENT_INDEX = {"Z": 0, "N": 1, "1": 1, "E": 2, "2": 2}

Missing = Literal["zeros", "copy", "raise"]


class SeismicDataError(ValueError):
    """A file or array that cannot be turned into valid model input."""


class RepairWarning(UserWarning):
    """A documented repair was applied to recorded data."""


def _check_finite(array: np.ndarray, what: str) -> None:
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise SeismicDataError(f"{what}: {bad} NaN/inf values")


# ----------------------------------------------------------------------------- SEG-Y and .dat


def read_segy(path: str | os.PathLike) -> np.ndarray:
    """A 2-D SEG-Y section as float32 [samples, traces] (rows = time/depth, columns = traces)."""
    import segyio

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no SEG-Y file at {path}")
    try:
        with segyio.open(path, ignore_geometry=True) as f:
            section = np.asarray(f.trace.raw[:], np.float32).T
    except (RuntimeError, OSError) as err:
        raise SeismicDataError(f"{path}: corrupt or truncated SEG-Y file ({err})") from err
    if section.size == 0:
        raise SeismicDataError(f"{path}: SEG-Y file holds no samples")
    _check_finite(section, path)
    return np.ascontiguousarray(section)


def segy_patches(section: np.ndarray, size: int = 224, stride: int | None = None) -> np.ndarray:
    """Cut a [samples, traces] section into z-scored patches [N, size, size, 1] on a regular grid.

    Each patch is normalised as SFM's pretraining data, (x − mean) / (std + 1e-6); the grid
    starts at (0, 0) with `stride` (default `size`, no overlap) and drops incomplete borders.
    """
    from seisfuse.data.transforms import zscore_image

    section = np.asarray(section, np.float32)
    if section.ndim != 2:
        raise SeismicDataError(f"expected a 2-D section [samples, traces], got shape {section.shape}")
    rows, cols = section.shape
    if rows < size or cols < size:
        raise SeismicDataError(f"section {rows}×{cols} is smaller than a {size}×{size} patch")
    _check_finite(section, "section")
    stride = size if stride is None else stride
    patches = [
        zscore_image(section[r : r + size, c : c + size])
        for r in range(0, rows - size + 1, stride)
        for c in range(0, cols - size + 1, stride)
    ]
    return np.stack(patches)[..., None]


def read_dat(path: str | os.PathLike, shape: Sequence[int] = (224, 224), zscore: bool = True) -> np.ndarray:
    """SFM's headerless little-endian float32 `.dat` patch → [H, W, 1] (z-scored unless told not).

    Use zscore=False for SFM's label files (float32 class ids; facies labels there are 1-based).
    """
    from seisfuse.data.transforms import zscore_image

    path = os.fspath(path)
    expected = int(np.prod(shape))
    nbytes = os.path.getsize(path)
    if nbytes != 4 * expected:
        raise SeismicDataError(
            f"{path}: {nbytes} bytes, expected {4 * expected} for float32 {tuple(shape)} "
            "(truncated file or wrong shape)"
        )
    data = np.fromfile(path, dtype="<f4").reshape(tuple(shape))
    _check_finite(data, path)
    return (zscore_image(data) if zscore else data.astype(np.float32))[..., None]


# ----------------------------------------------------------------------------- obspy waveforms


def read_stream(path: str | os.PathLike, **kwargs):
    """obspy.read (wildcards allowed) turning unreadable, truncated or corrupt files into errors.

    obspy only warns when a miniSEED record is cut short and returns the partial data, so any
    warning raised while reading is treated as corruption.
    """
    import obspy

    path = os.fspath(path)
    if not glob.glob(path):
        raise FileNotFoundError(f"no waveform file matches {path}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            stream = obspy.read(path, **kwargs)
        except Exception as err:  # obspy raises TypeError, ValueError, its own errors...
            raise SeismicDataError(f"{path}: unreadable or corrupt waveform file ({err})") from err
    problems = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    if problems:
        raise SeismicDataError(f"{path}: truncated or corrupt waveform file ({problems[0]})")
    if len(stream) == 0:
        raise SeismicDataError(f"{path}: no traces")
    return stream


def stream_to_window(
    stream,
    *,
    start=None,
    instrument: str | None = None,
    length: int = WINDOW,
    resample: bool = True,
    missing: Missing = "zeros",
    max_pad: int = 50,
) -> np.ndarray:
    """One station's obspy Stream → float32 [length, 3] at 100 Hz in Z, N, E order.

    - instrument: "NET.STA.LOC.CHA" without the component letter (e.g. "BW.RJOB..EH"); required
      when the stream holds several; traces of other components (e.g. hydrophones) are ignored.
    - Components Z/N/E or Z/1/2 (1 → N, 2 → E); split records of one component are merged.
    - Sampling rate other than 100 Hz: resampled (obspy's FFT resampling) if `resample`,
      otherwise an error.
    - start: obspy UTCDateTime of the first sample (default: the latest component start); every
      present component must cover the window, except that up to `max_pad` samples (0.5 s)
      missing at its end are zero-padded (obspy's bundled 30 s event has 3000 samples).
    - Missing or dead (constant) components: "zeros" (SeisLM / SeisBench "pad"), "copy" (the
      first present component, SeisBench "copy"), or "raise". All components dead is an error.
    """
    from obspy import Stream

    if missing not in ("zeros", "copy", "raise"):
        raise ValueError(f"missing must be 'zeros', 'copy' or 'raise', got {missing!r}")
    stream = stream.copy()
    groups = sorted({tr.id[:-1] for tr in stream})
    if instrument is None:
        if len(groups) > 1:
            raise SeismicDataError(f"stream holds several instruments {groups}; pass instrument=")
        instrument = groups[0]
    traces = [
        tr for tr in stream if tr.id[:-1] == instrument and tr.stats.channel[-1:].upper() in _COMPONENT_INDEX
    ]
    if not traces:
        raise SeismicDataError(f"no Z/N/E/1/2 component for instrument {instrument!r} (have {groups})")
    for tr in traces:
        _check_finite(tr.data, tr.id)
        if tr.stats.sampling_rate != SAMPLING_RATE:
            if not resample:
                raise SeismicDataError(
                    f"{tr.id}: sampling rate {tr.stats.sampling_rate} Hz, expected "
                    f"{SAMPLING_RATE:g} Hz (pass resample=True to resample)"
                )
            warnings.warn(
                f"{tr.id}: resampled {tr.stats.sampling_rate} Hz → {SAMPLING_RATE:g} Hz",
                RepairWarning,
                stacklevel=2,
            )
            tr.data = tr.data.astype(np.float64)
            tr.resample(SAMPLING_RATE)

    by_component: dict[int, object] = {}
    for tr in traces:
        k = _COMPONENT_INDEX[tr.stats.channel[-1].upper()]
        if k in by_component:
            merged = Stream(traces=[by_component[k], tr]).merge(method=1)
            if len(merged) != 1 or np.ma.is_masked(merged[0].data):
                raise SeismicDataError(
                    f"{instrument}: component {COMPONENTS[k]} has gaps or conflicting channels"
                )
            tr = merged[0]
        by_component[k] = tr
    if start is None:
        start = max(tr.stats.starttime for tr in by_component.values())
    out = np.zeros((length, 3), np.float32)
    present = []
    for k, tr in sorted(by_component.items()):
        first = int(round((start - tr.stats.starttime) * SAMPLING_RATE))  # nearest sample (≤ 5 ms)
        short = first + length - tr.stats.npts
        if first < 0 or short > max_pad:
            covered = tr.stats.npts / SAMPLING_RATE
            raise SeismicDataError(
                f"{tr.id}: {covered:.2f} s from {tr.stats.starttime} do not cover the "
                f"{length / SAMPLING_RATE:.2f} s window starting {start}"
            )
        if short > 0:
            warnings.warn(
                f"{tr.id}: last {short} samples of the window zero-padded", RepairWarning, stacklevel=2
            )
        data = np.asarray(tr.data[first : first + length], np.float64)
        if np.ptp(data) == 0:
            warnings.warn(
                f"{tr.id}: dead (constant) component treated as missing", RepairWarning, stacklevel=2
            )
            continue
        out[: data.size, k] = data
        present.append(k)
    if not present:
        raise SeismicDataError(f"{instrument}: all components are missing or zero")
    absent = [k for k in range(3) if k not in present]
    if absent:
        names = "".join(COMPONENTS[k] for k in absent)
        if missing == "raise":
            raise SeismicDataError(f"{instrument}: fewer than 3 components, missing {names}")
        warnings.warn(
            f"{instrument}: missing component(s) {names} filled with {missing}", RepairWarning, stacklevel=2
        )
        if missing == "copy":
            out[:, absent] = out[:, [present[0]]]
    return out


def read_waveform(path: str | os.PathLike, **kwargs) -> np.ndarray:
    """A file obspy reads → [3001, 3] float32 window; kwargs as `stream_to_window`."""
    return stream_to_window(read_stream(path), **kwargs)


# ----------------------------------------------------------------------------- SeisBench


class SeisBenchSource:
    """Random-access source over a SeisBench dataset directory (metadata.csv + waveforms.hdf5).

    Uses seisbench's own `WaveformDataset` (resampled to 100 Hz, components Z, N, E, missing
    components zero-padded as in SeisLM). Item i is a dict with "waveform" float32 [T, 3] (the
    full trace; window it with `transforms.random_window`) and "p_sample"/"s_sample" (float, NaN
    when absent): the earliest pick among the metadata columns trace_<phase>_arrival_sample whose
    phase starts with P or S. Picklable for grain worker processes (reopens lazily).
    """

    def __init__(self, path: str | os.PathLike, *, split: str | None = None, component_order: str = "ZNE"):
        self.path = os.fspath(path)
        self.split = split
        self.component_order = component_order
        self._dataset = None
        missing = [
            f for f in ("metadata.csv", "waveforms.hdf5") if not os.path.isfile(os.path.join(self.path, f))
        ]
        if missing:
            raise SeismicDataError(f"{self.path}: not a SeisBench dataset, missing {missing}")

    @property
    def dataset(self):
        if self._dataset is None:
            try:
                import seisbench.data as sbd
            except ImportError as err:  # seisbench pulls in torch, so it is an optional extra
                raise ImportError(
                    "reading SeisBench datasets needs seisbench: pip install 'seisfuse[dev]'"
                ) from err
            ds = sbd.WaveformDataset(
                self.path,
                sampling_rate=SAMPLING_RATE,
                component_order=self.component_order,
                dimension_order="NWC",
                missing_components="pad",
            )
            if self.split is not None:
                ds = {"train": ds.train, "dev": ds.dev, "test": ds.test}[self.split]()
            self._dataset = ds
        return self._dataset

    def __getstate__(self):
        return {**self.__dict__, "_dataset": None}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        waveform, meta = self.dataset.get_sample(int(index))
        name = meta.get("trace_name", index)
        waveform = np.asarray(waveform, np.float32)
        if waveform.ndim != 2 or waveform.shape[1] != 3:
            raise SeismicDataError(f"trace {name}: expected [T, 3] waveforms, got {waveform.shape}")
        _check_finite(waveform, f"trace {name}")
        return {"waveform": waveform, "p_sample": _first_pick(meta, "P"), "s_sample": _first_pick(meta, "S")}


def _first_pick(meta: dict, phase: str) -> np.float32:
    values = []
    for key, value in meta.items():
        if key.startswith("trace_") and key.endswith("_arrival_sample"):
            name = key[len("trace_") : -len("_arrival_sample")]
            if name[:1].upper() == phase and value is not None and np.isfinite(float(value)):
                values.append(float(value))
    return np.float32(min(values) if values else np.nan)
