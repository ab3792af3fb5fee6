"""Readers for the formats real seismic data comes in, each returning seisfuse's conventions.

- SEG-Y sections (segyio, either byte order) and Seismic Unix files → [samples, traces] arrays and
  z-scored 224×224 SFM patches.
- SFM's headerless float32 `.dat` patches.
- Anything obspy reads (miniSEED, SAC, ...) → [3001, 3] windows at 100 Hz in Z, N, E order;
  one-file-per-component folders grouped into 3-component records (`waveform_records`).
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

from seisfuse.data.transforms import SAMPLING_RATE, WINDOW

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


# SEG-Y's binary-header data sample format codes (rev 0-2); swapped they are multiples of 256.
_SEGY_FORMATS = {1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 15, 16}
_SEGY_FORMAT_OFFSET = 3200 + 24  # bytes 3225-3226 of the file


def _segy_endian(path: str) -> str:
    """'big' or 'little' from the sample format code, which is valid in exactly one byte order."""
    with open(path, "rb") as f:
        f.seek(_SEGY_FORMAT_OFFSET)
        raw = f.read(2)
    if len(raw) == 2:
        for endian in ("big", "little"):
            if int.from_bytes(raw, endian) in _SEGY_FORMATS:
                return endian
    raise SeismicDataError(f"{path}: corrupt or truncated SEG-Y file (no valid sample format code at "
                           f"bytes 3225-3226: {raw.hex() or 'end of file'})")


def _su_endian(path: str) -> str:
    """Seismic Unix has no file header: the byte order whose sample count (trace header bytes
    115-116) tiles the file with equal traces; little-endian (what SU writes on PCs) if both do."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(114)
        raw = f.read(2)
    for endian in ("little", "big"):
        samples = int.from_bytes(raw, endian) if len(raw) == 2 else 0
        if samples and size % (240 + 4 * samples) == 0:
            return endian
    raise SeismicDataError(f"{path}: corrupt or truncated Seismic Unix file (its traces do not tile its "
                           f"{size} bytes in either byte order)")


def read_segy(path: str | os.PathLike) -> np.ndarray:
    """A 2-D SEG-Y (or, for `.su` files, Seismic Unix) section as float32 [samples, traces]
    (rows = time/depth, columns = traces). Big- and little-endian files are both read."""
    import segyio
    import segyio.su

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no SEG-Y file at {path}")
    su = path.lower().endswith(".su")
    endian = _su_endian(path) if su else _segy_endian(path)
    try:
        with (segyio.su.open if su else segyio.open)(path, ignore_geometry=True, endian=endian) as f:
            section = np.asarray(f.trace.raw[:], np.float32).T
    except (RuntimeError, OSError, ValueError) as err:
        raise SeismicDataError(f"{path}: corrupt or truncated {'Seismic Unix' if su else 'SEG-Y'} file "
                               f"({err})") from err
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


# Words in obspy/libmseed warnings that mean data were lost (a record cut short and skipped, a
# block that is not a record); other warnings (a time rounded, a non-standard but readable field)
# describe data obspy read in full.
_LOSS_WORDS = ("corrupt", "skip", "truncat", "not enough", "invalid", "unable", "failed", "error")


def read_stream(path: str | os.PathLike, **kwargs):
    """obspy.read (wildcards allowed) turning unreadable, truncated or corrupt files into errors.

    obspy only warns when a miniSEED record is cut short and returns the partial data, so a
    warning that reports lost data is an error; any other warning (e.g. a sample spacing rounded
    to microseconds) is passed on, prefixed with the file name, and the data are used.
    """
    import obspy

    path = os.fspath(path)
    pattern = glob.escape(path) if os.path.isfile(path) else path  # '[' in a real name is no pattern
    if not glob.glob(pattern):
        raise FileNotFoundError(f"no waveform file matches {path}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            stream = obspy.read(pattern, **kwargs)
        except Exception as err:  # obspy raises TypeError, ValueError, its own errors...
            raise SeismicDataError(f"{path}: unreadable or corrupt waveform file ({err})") from err
    notes = [w for w in caught if not issubclass(w.category, (DeprecationWarning, ResourceWarning))]
    for note in notes:
        if any(word in str(note.message).lower() for word in _LOSS_WORDS):
            raise SeismicDataError(f"{path}: truncated or corrupt waveform file ({note.message})")
    for note in notes:
        warnings.warn(f"{path}: {note.message}", note.category, stacklevel=2)
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


def waveform_records(paths: Sequence[str | os.PathLike]) -> list[tuple[str, object, str]]:
    """(name, Stream, instrument) for each 3-component record in the files obspy reads.

    An instrument ("NET.STA.LOC.CH", the channel without its component letter) whose Z/N/E (or
    Z/1/2) components are all in one file is a record of that file, named after it (with the
    instrument if the file holds several). Components spread over several files (a folder of
    one-file-per-component SAC or miniSEED) are joined per instrument, one record per stretch
    of overlapping time, named "INSTRUMENT (file, file, ...)"; a record still missing a
    component is left for `stream_to_window` to refuse or fill. Records keep the order of the
    files they come from.
    """
    from obspy import Stream

    records: list[tuple[int, str, object, str]] = []
    pooled: dict[str, list[tuple[int, str, object]]] = {}
    for index, path in enumerate(paths):
        name = os.path.basename(os.fspath(path))
        by_instrument: dict[str, list] = {}
        for tr in read_stream(path):
            if tr.stats.channel[-1:].upper() in _COMPONENT_INDEX:
                by_instrument.setdefault(tr.id[:-1], []).append(tr)
        if not by_instrument:
            raise SeismicDataError(f"{path}: no Z/N/E/1/2 component")
        for instrument, traces in by_instrument.items():
            components = {_COMPONENT_INDEX[tr.stats.channel[-1].upper()] for tr in traces}
            if components == {0, 1, 2}:
                label = name if len(by_instrument) == 1 else f"{name}[{instrument}]"
                records.append((index, label, Stream(traces=traces), instrument))
            else:
                pooled.setdefault(instrument, []).extend((index, name, tr) for tr in traces)
    for instrument, entries in pooled.items():
        entries.sort(key=lambda e: e[2].stats.starttime)
        group: list = []
        for entry in entries + [None]:
            if group and (entry is None or entry[2].stats.starttime > max(e[2].stats.endtime for e in group)):
                files = list(dict.fromkeys(e[1] for e in group))
                records.append((min(e[0] for e in group), f"{instrument} ({', '.join(files)})",
                                Stream(traces=[e[2] for e in group]), instrument))
                group = []
            if entry is not None:
                group.append(entry)
    records.sort(key=lambda r: r[0])
    return [(label, stream, instrument) for _, label, stream, instrument in records]


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
