"""Phase picks on records of any length with a window picker: the machinery of `seisfuse pick`.

The picker sees fixed windows (3001 samples at 100 Hz, Z/N/E, each normalised as in training)
and returns per-sample probabilities (P, S, noise). A record longer than a window is covered by
overlapping windows, the window outputs are merged into one curve per phase, and picks are read
off the curves. The three steps follow SeisBench's `WaveformModel.annotate` and
`picks_from_annotations`, so results match what SeisBench users expect:

- windows start every `stride` samples from the record's first sample, and one more window is
  aligned to the record's end when the stride does not land there;
- `blinding` samples at each window edge can be discarded (SeisBench sets them to NaN); the
  overlapping windows are merged by the mean ("avg") or the maximum ("max") of the values that
  remain, and a sample no window covers is NaN;
- a pick is a stretch where the curve rises to `threshold` and stays above `threshold / 2`
  (obspy's trigger_onset, as SeisBench), reported at its peak.

The model is any `predict(windows [n, 3001, 3]) -> probabilities [n, 3001, 3]`, so this module
does not depend on the model code; `docs/picking.md` describes the command and the CSV.
"""

from __future__ import annotations

import csv
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

import numpy as np

from seisfuse.data.readers import (
    _COMPONENT_INDEX,
    COMPONENTS,
    RepairWarning,
    SeismicDataError,
    _check_finite,
    read_stream,
)
from seisfuse.data.transforms import SAMPLING_RATE, WINDOW, normalize_waveform

if TYPE_CHECKING:
    from obspy import Stream, Trace, UTCDateTime

PHASES = ("P", "S")  # the picker's output channels 0 and 1; channel 2 is noise
DEFAULT_THRESHOLDS: Mapping[str, float] = MappingProxyType({"P": 0.3, "S": 0.3})  # SeisBench's
STRIDE = 1500  # about half a window: every sample away from the record ends is seen twice
CSV_COLUMNS = ("file", "station", "phase", "time", "sample", "probability")

Predict = Callable[[np.ndarray], np.ndarray]
Stacking = Literal["avg", "max"]


@dataclass(frozen=True)
class Pick:
    """One pick: the peak of a stretch of a phase's probability curve above its threshold.

    sample, start and end are sample indices in the record (start/end: where the curve first
    reaches the threshold and where it last stays above half of it); time is the peak's time,
    an obspy UTCDateTime when the record's start time is known, else seconds from its start.
    """

    phase: str
    sample: int
    time: float | UTCDateTime
    probability: float
    start: int
    end: int


@dataclass(frozen=True)
class Record:
    """A gap-free stretch of one station's three components: float32 [T, 3] at 100 Hz, Z/N/E.

    offset counts samples from the station's first sample in the input (so picks in different
    stretches share one sample axis); start_time is the obspy UTCDateTime of waveform[0].
    """

    station: str
    start_time: UTCDateTime
    offset: int
    waveform: np.ndarray


@dataclass
class PickSummary:
    """What `pick_files` did: files read and picked, files skipped with the reason, pick counts."""

    out_csv: str
    files_ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stations: list[str] = field(default_factory=list)
    picks: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------- windows and stacking


def window_starts(length: int, window: int = WINDOW, stride: int = STRIDE) -> np.ndarray:
    """First samples of the windows covering [0, length): every `stride`, plus one at the end.

    As SeisBench's annotate: starts 0, stride, 2·stride, ... while a whole window fits, then
    `length − window` if the last of those does not reach the record's end.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    if stride > window:
        raise ValueError(f"stride {stride} > window {window} would leave samples no window sees")
    if length < window:
        raise SeismicDataError(
            f"record of {length} samples is shorter than one {window}-sample window"
        )
    starts = np.arange(0, length - window + 1, stride)
    if starts[-1] + window < length:
        starts = np.append(starts, length - window)
    return starts


def sliding_windows(
    waveform: np.ndarray, window: int = WINDOW, stride: int = STRIDE
) -> tuple[np.ndarray, np.ndarray]:
    """The windows [N, window, C] covering a record [T, C] and their start samples [N]."""
    waveform = np.asarray(waveform)
    if waveform.ndim != 2:
        raise SeismicDataError(f"expected a record [T, C], got shape {waveform.shape}")
    starts = window_starts(waveform.shape[0], window, stride)
    return np.stack([waveform[s : s + window] for s in starts]), starts


class _Stack:
    """Running merge of window outputs into one [length, C] curve, in memory proportional to the
    record (a day at 100 Hz: 200 MB), not to windows × coverage as SeisBench's array: float32 sums
    and counts for "avg" (SeisBench also sums in float32), a running maximum for "max"; NaNs are
    skipped."""

    def __init__(self, length: int, channels: int, method: Stacking, blinding: tuple[int, int]):
        if method not in ("avg", "max"):
            raise ValueError(f"stacking must be 'avg' or 'max', got {method!r}")
        lo, hi = blinding
        if lo < 0 or hi < 0:
            raise ValueError(f"blinding must be two sample counts >= 0, got {blinding}")
        self.length, self.method, self.blinding = length, method, (int(lo), int(hi))
        if method == "avg":
            self.total = np.zeros((length, channels), np.float32)
            self.count = np.zeros((length, channels), np.int32)
        else:
            self.peak = np.full((length, channels), -np.inf, np.float32)

    def add(self, probs: np.ndarray, starts: Iterable[int]) -> None:
        window = probs.shape[1]
        lo, hi = self.blinding
        if lo + hi >= window:
            raise ValueError(f"blinding {self.blinding} leaves nothing of a {window}-sample window")
        for p, start in zip(probs, starts, strict=True):
            if not 0 <= start <= self.length - window:
                raise ValueError(f"window start {start} puts a {window}-sample window outside "
                                 f"[0, {self.length})")
            p = p[lo : window - hi]
            span = slice(start + lo, start + window - hi)
            valid = ~np.isnan(p)
            if self.method == "avg":
                self.total[span] += np.where(valid, p, 0.0)
                self.count[span] += valid
            else:
                self.peak[span] = np.fmax(self.peak[span], np.where(valid, p, -np.inf))

    def result(self) -> np.ndarray:
        if self.method == "avg":
            mean = (self.total / np.maximum(self.count, 1)).astype(np.float32)
            return np.where(self.count > 0, mean, np.float32(np.nan))
        return np.where(np.isneginf(self.peak), np.float32(np.nan), self.peak)


def stack_probabilities(
    window_probs: np.ndarray,
    starts: Sequence[int],
    length: int,
    method: Stacking = "avg",
    blinding: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Merge overlapping window outputs [N, W, C] starting at `starts` into one curve [length, C].

    SeisBench's stacking: the first blinding[0] and last blinding[1] samples of every window are
    dropped, then each sample gets the mean ("avg") or the maximum ("max") of the windows that
    still cover it, ignoring NaNs; a sample no window covers is NaN.
    """
    window_probs = np.asarray(window_probs, np.float32)
    if window_probs.ndim != 3 or len(window_probs) != len(starts):
        raise ValueError(f"expected window outputs [N, W, C] with N = {len(starts)} starts, "
                         f"got shape {window_probs.shape}")
    stack = _Stack(length, window_probs.shape[2], method, blinding)
    stack.add(window_probs, [int(s) for s in starts])
    return stack.result()


# ----------------------------------------------------------------------------- picks


def find_picks(
    curve: np.ndarray,
    threshold: float,
    sampling_rate: float = SAMPLING_RATE,
    *,
    phase: str = "P",
    start_time: UTCDateTime | None = None,
) -> list[Pick]:
    """Picks on one probability curve [T], as SeisBench's `picks_from_annotations`.

    A trigger switches on at the first sample >= threshold and off after the last sample of that
    run that is >= threshold / 2 (obspy's trigger_onset with the lower threshold half the upper);
    the pick is the curve's maximum inside [on, off]. NaN (blinded, uncovered) samples never
    trigger. time is start_time + sample / sampling_rate, or sample / sampling_rate without one.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be positive, got {sampling_rate}")
    curve = np.asarray(curve, np.float64)
    if curve.ndim != 1:
        raise ValueError(f"find_picks takes one curve [T], got shape {curve.shape}")
    with np.errstate(invalid="ignore"):
        low, high = curve >= threshold / 2, curve >= threshold
    edges = np.diff(np.concatenate([[0], low.astype(np.int8), [0]]))
    picks = []
    for run_start, run_end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        above = np.flatnonzero(high[run_start:run_end])
        if above.size == 0:
            continue
        on, off = run_start + int(above[0]), int(run_end) - 1
        peak = on + int(np.argmax(curve[on : off + 1]))
        seconds = peak / sampling_rate
        picks.append(Pick(phase=phase, sample=peak,
                          time=seconds if start_time is None else start_time + seconds,
                          probability=float(curve[peak]), start=on, end=off))
    return picks


def _check_probabilities(probs: np.ndarray, n: int, window: int) -> np.ndarray:
    """The picker's output, refused unless it is [n, window, 3] probabilities (not logits)."""
    probs = np.asarray(probs, np.float32)
    if probs.shape != (n, window, 3):
        raise ValueError(f"predict returned shape {probs.shape} for {n} windows, expected "
                         f"({n}, {window}, 3) probabilities in the order P, S, noise")
    if not np.all(np.isfinite(probs)):
        raise ValueError("predict returned NaN/inf probabilities")
    lo, hi = float(probs.min()), float(probs.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"predict returned values in [{lo:.3g}, {hi:.3g}]: expected probabilities "
                         "(a softmax over P, S, noise), not logits")
    return probs


def annotate_record(
    waveform: np.ndarray,
    predict: Predict,
    *,
    window: int = WINDOW,
    stride: int = STRIDE,
    stacking: Stacking = "avg",
    blinding: tuple[int, int] = (0, 0),
    batch_size: int = 64,
) -> np.ndarray:
    """Probability curves [T, 3] (P, S, noise) of a record [T, 3] (Z, N, E at the picker's rate).

    Each window is normalised as in training (per-channel demean / std) before `predict`, which
    is called with float32 batches [n <= batch_size, window, 3] (a jitted predict should pad the
    last batch itself to keep one compiled shape).
    """
    waveform = np.asarray(waveform)
    if waveform.ndim != 2 or waveform.shape[1] != 3:
        raise SeismicDataError(f"expected a record [T, 3] in Z, N, E order, got shape {waveform.shape}")
    _check_finite(waveform, "record")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    starts = window_starts(waveform.shape[0], window, stride)
    stack = _Stack(waveform.shape[0], 3, stacking, blinding)
    for first in range(0, len(starts), batch_size):
        batch_starts = starts[first : first + batch_size]
        batch = np.stack([normalize_waveform(waveform[s : s + window]) for s in batch_starts])
        stack.add(_check_probabilities(predict(batch), len(batch_starts), window), batch_starts)
    return stack.result()


def _check_thresholds(thresholds: Mapping[str, float]) -> None:
    """Refused before any window is read, not after hours of picking."""
    unknown = set(thresholds) - set(PHASES)
    if unknown:
        raise ValueError(f"thresholds for unknown phases {sorted(unknown)}; the picker outputs {PHASES}")
    for phase, threshold in thresholds.items():
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold {phase}={threshold}: thresholds must be in (0, 1]")


def pick_record(
    waveform: np.ndarray,
    predict: Predict,
    *,
    sampling_rate: float = SAMPLING_RATE,
    start_time: UTCDateTime | None = None,
    thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
    window: int = WINDOW,
    stride: int = STRIDE,
    stacking: Stacking = "avg",
    blinding: tuple[int, int] = (0, 0),
    batch_size: int = 64,
) -> list[Pick]:
    """P and S picks on a record [T >= window, 3] (Z, N, E), sorted by sample.

    thresholds: phase → trigger threshold, for the phases to pick ("P", "S"); sampling_rate only
    converts samples to times (the waveform must already be at the rate the picker was trained
    at, 100 Hz for SeisLM); start_time (obspy UTCDateTime of waveform[0]) makes times absolute.
    """
    _check_thresholds(thresholds)
    curves = annotate_record(waveform, predict, window=window, stride=stride, stacking=stacking,
                             blinding=blinding, batch_size=batch_size)
    picks = [
        pick
        for phase, threshold in thresholds.items()
        for pick in find_picks(curves[:, PHASES.index(phase)], threshold, sampling_rate,
                               phase=phase, start_time=start_time)
    ]
    return sorted(picks, key=lambda p: (p.sample, p.phase))


# ----------------------------------------------------------------------------- reading stations


def station_id(trace: Trace) -> str:
    """NET.STA.LOC of an obspy trace: one record per station."""
    s = trace.stats
    return f"{s.network}.{s.station}.{s.location}"


def _component_pieces(stream: Stream, component: str, name: str) -> list[Trace]:
    """Merged, gap-split traces of one component (merge method 0: gaps and overlaps whose data
    differ are left out; identical overlaps, e.g. the same hour in two files, are merged)."""
    try:
        merged = stream.merge(method=0)
    except Exception as err:  # obspy refuses e.g. differing calibration factors
        raise SeismicDataError(f"{name}: component {component} cannot be merged ({err})") from err
    pieces = [tr for tr in merged.split() if tr.stats.npts > 0]
    if not pieces:
        raise SeismicDataError(f"{name}: component {component} has no samples left after merging "
                               "(overlapping traces with differing data are left out)")
    return pieces


def station_records(stream: Stream, *, source: str = "stream", window: int = WINDOW) -> list[Record]:
    """One station's traces (obspy Stream, any number of files' worth) → its gap-free 3-C records.

    - Channels whose last letter is Z, N/1 or E/2 are used (1 → N, 2 → E); others (pressure,
      state-of-health) are ignored. Several instruments (e.g. HH? and HN?) or both N and 1 are
      refused: select one with the `channel` pattern of `pick_files`.
    - Other sampling rates are resampled to 100 Hz (obspy's FFT resampling, a RepairWarning).
    - Traces of one component are merged; the record is cut at every gap of any component, and
      the stretches where all three components have data (placed on a common 100 Hz grid, to the
      nearest sample) are the records; stretches shorter than one window are left out with a
      warning. None long enough, fewer than three components, or NaN/inf → SeismicDataError
      naming `source`.
    """
    from obspy import Stream

    stations = sorted({station_id(tr) for tr in stream})
    if len(stations) != 1:
        raise SeismicDataError(f"{source}: station_records takes one station's traces, got {stations}")
    name = f"{source}: station {stations[0]}"
    traces = [tr for tr in stream if tr.stats.channel[-1:].upper() in _COMPONENT_INDEX and tr.stats.npts]
    if not traces:
        raise SeismicDataError(f"{name}: no Z/N/E/1/2 channel with samples")
    instruments = sorted({tr.stats.channel[:-1] for tr in traces})
    if len(instruments) > 1:
        raise SeismicDataError(f"{name}: several instruments {instruments}; pick one with a channel "
                               f"pattern such as '{instruments[0]}?'")
    by_component: dict[int, list] = {}
    for tr in traces:
        _check_finite(tr.data, f"{name}: {tr.id}")
        tr = tr.copy()
        tr.data = tr.data.astype(np.float64)
        if tr.stats.sampling_rate != SAMPLING_RATE:
            warnings.warn(f"{name}: {tr.id} resampled {tr.stats.sampling_rate:g} Hz → "
                          f"{SAMPLING_RATE:g} Hz", RepairWarning, stacklevel=2)
            tr.resample(SAMPLING_RATE)
        by_component.setdefault(_COMPONENT_INDEX[tr.stats.channel[-1].upper()], []).append(tr)
    if len(by_component) < 3:
        have = "".join(COMPONENTS[k] for k in sorted(by_component))
        raise SeismicDataError(f"{name}: {len(by_component)} component(s) ({have}); picking needs "
                               "three (Z, N or 1, E or 2)")
    for k, trs in by_component.items():
        codes = sorted({tr.stats.channel for tr in trs})
        if len(codes) > 1:
            raise SeismicDataError(f"{name}: channels {codes} are both component {COMPONENTS[k]}")

    pieces = {k: _component_pieces(Stream(trs), COMPONENTS[k], name) for k, trs in by_component.items()}
    origin = min(tr.stats.starttime for trs in pieces.values() for tr in trs)
    spans: dict[int, list[tuple[int, int, np.ndarray]]] = {}
    for k, trs in pieces.items():
        spans[k] = []
        for tr in trs:
            first = int(round((tr.stats.starttime - origin) * SAMPLING_RATE))
            spans[k].append((first, first + tr.stats.npts, tr.data))
        spans[k].sort(key=lambda s: s[0])
    common = [(lo, hi) for lo, hi, _ in spans[0]]
    for k in (1, 2):
        common = _intersect(common, [(lo, hi) for lo, hi, _ in spans[k]])

    records, too_short = [], []
    for lo, hi in common:
        if hi - lo < window:
            too_short.append(hi - lo)
            continue
        waveform = np.empty((hi - lo, 3), np.float32)
        for k in range(3):
            first, _, data = next(s for s in spans[k] if s[0] <= lo and hi <= s[1])
            waveform[:, k] = data[lo - first : hi - first]
        records.append(Record(stations[0], origin + lo / SAMPLING_RATE, lo, waveform))
    if not records:
        longest = max((hi - lo for lo, hi in common), default=0)
        raise SeismicDataError(f"{name}: no stretch of {window} samples ({window / SAMPLING_RATE:.2f} s) "
                               f"with all three components; the longest is {longest} samples")
    if too_short:
        warnings.warn(f"{name}: {len(too_short)} stretch(es) between gaps shorter than a window "
                      f"({sum(too_short)} samples in all) not picked", stacklevel=2)
    return records


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Intersection of two sorted lists of disjoint half-open intervals."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


# ----------------------------------------------------------------------------- files → CSV


def _expand(paths: Sequence[str | os.PathLike], out_csv: str) -> tuple[list[str], dict[str, str]]:
    """Input files: folders give their files (sorted, not recursive, the output CSV left out)."""
    files, failed = [], {}
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            files += sorted(
                p for p in (os.path.join(path, n) for n in os.listdir(path))
                if os.path.isfile(p) and os.path.realpath(p) != os.path.realpath(out_csv)
            )
        elif os.path.isfile(path):
            files.append(path)
        else:
            failed[path] = "no such file or folder"
    return list(dict.fromkeys(files)), failed


def _write_csv(path: str, rows: list[tuple], overwrite: bool) -> None:
    """Write the table to a temporary file next to `path`, then rename it into place (a reader
    never sees half a table; an interrupted run leaves the old file)."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        if not overwrite and os.path.exists(path):
            raise FileExistsError(f"{path} appeared while picking; not overwritten (overwrite=True)")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pick_files(
    paths: Sequence[str | os.PathLike],
    predict: Predict,
    out_csv: str | os.PathLike,
    *,
    overwrite: bool = False,
    channel: str | None = None,
    thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
    stride: int = STRIDE,
    stacking: Stacking = "avg",
    blinding: tuple[int, int] = (0, 0),
    batch_size: int = 64,
) -> PickSummary:
    """Pick every station in waveform files (or folders of them) and write one CSV of picks.

    Files are read with obspy (miniSEED, SAC, ...); traces are grouped by NET.STA.LOC across all
    files (three single-component files, or consecutive hours, make one station), optionally
    after `obspy.Stream.select(channel=channel)` (e.g. "HH?"), and picked per gap-free record
    (`station_records`, `pick_record`). A file that cannot be read, or whose station cannot be
    picked, is named on stderr with the reason and skipped; the other files' picks are kept.

    The CSV (columns file, station, phase, time, sample, probability) is written atomically,
    never over an existing file unless overwrite=True, and never over one of the inputs.
    """
    out_csv = os.fspath(out_csv)
    out_dir = os.path.dirname(os.path.abspath(out_csv))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"output folder {out_dir} does not exist")
    if os.path.isdir(out_csv):
        raise IsADirectoryError(f"{out_csv} is a folder; give a CSV file name")
    files, failed = _expand(paths, out_csv)
    for path in files:
        if os.path.realpath(path) == os.path.realpath(out_csv) or (
            os.path.exists(out_csv) and os.path.samefile(path, out_csv)
        ):
            raise ValueError(f"the output {out_csv} is one of the input files; choose another name")
    if os.path.exists(out_csv) and not overwrite:
        raise FileExistsError(f"{out_csv} exists; pass overwrite=True (--overwrite) to replace it")
    _check_thresholds(thresholds)

    from obspy import Stream

    stations: dict[str, tuple[Stream, list[str]]] = {}
    for path in files:
        try:
            stream = read_stream(path)
        except (SeismicDataError, OSError) as err:
            failed[path] = str(err)
            continue
        if channel is not None:
            stream = stream.select(channel=channel)
        usable = [tr for tr in stream if tr.stats.channel[-1:].upper() in _COMPONENT_INDEX]
        if not usable:
            failed[path] = (f"{path}: no Z/N/E/1/2 channel" +
                            (f" matching {channel!r}" if channel is not None else ""))
            continue
        for tr in usable:
            group, sources = stations.setdefault(station_id(tr), (Stream(), []))
            group.append(tr)
            if path not in sources:
                sources.append(path)

    rows, summary = [], PickSummary(out_csv=out_csv, picks={phase: 0 for phase in thresholds})
    for station in sorted(stations):
        group, sources = stations[station]
        source = ";".join(sources)
        try:
            station_rows = []
            for record in station_records(group, source=source):
                for pick in pick_record(record.waveform, predict, start_time=record.start_time,
                                        thresholds=thresholds, stride=stride, stacking=stacking,
                                        blinding=blinding, batch_size=batch_size):
                    station_rows.append((source, station, pick.phase, str(pick.time),
                                         record.offset + pick.sample, f"{pick.probability:.4f}"))
        except SeismicDataError as err:
            for path in sources:
                failed.setdefault(path, str(err))
            continue
        rows += station_rows
        summary.stations.append(station)
        for row in station_rows:
            summary.picks[row[2]] += 1
    for path, reason in failed.items():
        print(f"seisfuse pick: skipped {path}: {reason}", file=sys.stderr)
    _write_csv(out_csv, rows, overwrite)
    summary.failed = failed
    summary.files_ok = [path for path in files if path not in failed]
    return summary
