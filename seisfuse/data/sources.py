"""Random-access sources for fine-tuning and evaluation, and the one factory that reads a config's
`data` section (used by the training loop and the CLI).

A source has __len__ and __getitem__ returning a dict of numpy arrays, and pickles small (grain
worker processes receive a copy): file lists and paths only, every array read per item.

- `SFMTaskSource`: SFM's own `.dat` task folders (SFM-Finetune/util/datasets.py layout).
- `PickTableSource`: waveform files obspy reads, with a CSV table of P/S pick times.
- `make_source(data)`: "synthetic", "dat", "seisbench" or "pick_table", each with a held-out split.

docs/data-downstream.md describes the layouts, the splits and the batch each task makes.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from seisfuse.data.readers import SeismicDataError, read_dat
from seisfuse.data.transforms import SAMPLING_RATE, WINDOW

# ----------------------------------------------------------------------------- SFM .dat task folders


# One SFM fine-tuning task: its folders (data, label) per split, the default patch size, the keys
# its items carry, and for segmentation the class count, the label offset and where SFM's
# train/val cut falls. Folder "" is the task root; "=" means the label is the data file itself.
_SFM_TASKS: dict[str, dict[str, Any]] = {
    "facies": {"size": 768, "label_key": "label", "classes": 6, "label_offset": -1, "train_count": 100,
               "folders": {"train": ("seismic", "label"), "val": ("seismic", "label")}},
    "salt": {"size": 224, "label_key": "label", "classes": 2, "label_offset": 0, "train_count": 3500,
             "folders": {"train": ("seismic", "label"), "val": ("seismic", "label")}},
    "denoise": {"size": 224, "label_key": "clean",
                "folders": {"train": ("seismic", "label"), "val": ("field", "=")}},
    "reflectivity": {"size": 224, "label_key": "reflectivity",
                   "folders": {"train": ("seismic", "label"), "val": ("SEAMseismic", "SEAMreflect")}},
    "interpolation": {"size": 224, "label_key": "image", "folders": {"train": ("", None), "val": ("", None)}},
}
SFM_TASKS = tuple(_SFM_TASKS)
_SFM_NAMES = {"seam": "facies", "reflection": "reflectivity"}  # SFM's --task names, lower-cased


def _numbered_files(folder: str, prefix: str = "") -> list[str]:
    """`folder/<prefix><i>.dat` for consecutive i (SFM's naming), in numeric order; a gap is an error."""
    if not os.path.isdir(folder):
        raise SeismicDataError(f"{folder}: no such folder (SFM's task layout expects it)")
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.dat$")
    numbers = sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m)
    if not numbers:
        raise SeismicDataError(f"{folder}: no {prefix}<i>.dat files")
    expected = range(numbers[0], numbers[0] + len(numbers))
    if numbers != list(expected):
        gap = next(i for i in expected if i not in set(numbers))
        raise SeismicDataError(f"{os.path.join(folder, f'{prefix}{gap}.dat')} is missing: files {prefix}"
                               f"{numbers[0]}..{prefix}{numbers[-1]}.dat must be numbered without gaps")
    return [os.path.join(folder, f"{prefix}{i}.dat") for i in numbers]


class SFMTaskSource:
    """One split of an SFM fine-tuning task folder, read one `.dat` pair per item.

    Layout (SFM-Finetune/util/datasets.py): headerless little-endian float32 [size, size] files
    named `<i>.dat`, i = 0, 1, ...; a label file has the same name in the label folder.

    - "facies" (SFM "SEAM", 768×768, 6 classes stored 1..6): seismic/, label/; files
      i < 100 train, the rest val. Labels are made 0-based.
    - "salt" (224×224, 0/1 labels): seismic/, label/; i < 3500 train, the rest val.
    - "denoise": train seismic/ (noisy) + label/ (clean); val field/ with the field record as its
      own target (SFM's field data have no clean truth).
    - "reflectivity" (SFM "Reflection"): train seismic/ + label/; val SEAMseismic/ + SEAMreflect/.
    - "interpolation": train `<i>.dat` in the root, val `U<i>.dat` there; the image is its own target.

    Items: {"image": float32 [size, size, 1] as stored, plus "label" int32 [size, size] (facies,
    salt), "clean" or "reflectivity" float32 [size, size, 1]}; the pipeline normalises them per
    task. `label_key` says which key holds the label and `num_classes` the class count (None for
    regression). `train_count` moves the facies/salt train/val cut (for folders smaller than SFM's).
    """

    def __init__(self, root: str | os.PathLike, split: str, task: str, size: int | None = None, *,
                 train_count: int | None = None):
        name = _SFM_NAMES.get(str(task).lower(), str(task).lower())
        if name not in _SFM_TASKS:
            raise ValueError(f"unknown SFM task {task!r}, expected one of {SFM_TASKS}")
        if split not in ("train", "val"):
            raise ValueError(f"SFM task folders have splits 'train' and 'val', got {split!r}")
        spec = _SFM_TASKS[name]
        self.root, self.split, self.task = os.fspath(root), split, name
        self.size = int(size or spec["size"])
        if self.size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.label_key = spec["label_key"]
        self.num_classes = spec.get("classes")
        self._offset = spec.get("label_offset", 0)
        data_dir, label_dir = spec["folders"][split]
        prefix = "U" if name == "interpolation" and split == "val" else ""
        data = _numbered_files(os.path.join(self.root, data_dir), prefix)
        if "train_count" in spec:
            cut = spec["train_count"] if train_count is None else int(train_count)
            data = data[:cut] if split == "train" else data[cut:]
            if not data:
                side = "<" if split == "train" else ">="
                raise SeismicDataError(f"{self.root}: no {split} files for {name} (files with index {side} "
                                       f"{cut} form the {split} split; pass train_count to move the cut)")
        elif train_count is not None:
            raise ValueError(f"train_count applies to facies and salt (splits of one folder), not {name}")
        if label_dir is None or label_dir == "=":
            labels = [None] * len(data) if label_dir is None else list(data)
        else:
            labels = [os.path.join(self.root, label_dir, os.path.basename(f)) for f in data]
        nbytes = 4 * self.size * self.size
        for path in dict.fromkeys(data + [p for p in labels if p is not None]):
            if not os.path.isfile(path):
                raise SeismicDataError(f"{path} is missing (every {data_dir or 'root'} file needs its label)")
            if os.path.getsize(path) != nbytes:
                raise SeismicDataError(f"{path}: {os.path.getsize(path)} bytes, expected {nbytes} for a "
                                       f"float32 {self.size}×{self.size} patch (wrong size= or truncated)")
        self.data_files, self.label_files = data, labels

    def __len__(self) -> int:
        return len(self.data_files)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        shape = (self.size, self.size)
        out = {"image": read_dat(self.data_files[index], shape, zscore=False)}
        label_path = self.label_files[index]
        if label_path is None:
            return out
        label = read_dat(label_path, shape, zscore=False)
        if self.num_classes is None:
            out[self.label_key] = label
            return out
        classes = label[..., 0] + self._offset
        bad = (classes != np.round(classes)) | (classes < 0) | (classes >= self.num_classes)
        if bad.any():
            stored = np.unique(label[..., 0][bad])[:5].tolist()
            raise SeismicDataError(f"{label_path}: label values {stored} are not {self.task} classes "
                                   f"({-self._offset}..{self.num_classes - 1 - self._offset} stored)")
        out["label"] = classes.astype(np.int32)
        return out


# ----------------------------------------------------------------------------- pick tables


class PickTableSource:
    """Waveform files listed in a pick table, each read as [window, 3] from its record start.

    The CSV has columns `file,p_time,s_time` (others ignored); `file` is relative to the CSV's
    folder (or absolute); a time is an absolute UTC ISO string ("2024-05-01T12:00:03.25") or
    seconds from the record start (a number); empty means no pick. The record start is the
    latest start among the instrument's components (where seisfuse's reader starts its window).
    Records are read with `readers.read_stream` + `stream_to_window` (resampled to 100 Hz, Z/N/E,
    missing components zero-filled), so a record must cover `window` samples.

    Items: {"waveform": float32 [window, 3], "p_sample", "s_sample": float32 sample indices in the
    window, NaN when absent or outside the window read}, plus "label" (int32) when the table has a
    `label` column (event classes for the classify task; every row needs an integer there).

    A table row that names a missing file raises (naming row and file) when the source is built;
    one whose file is corrupt raises when read. skip_bad=True instead reads every record once
    while building, drops the rows that fail and keeps them in `skipped` ([(row, reason)]).
    """

    def __init__(self, table_csv: str | os.PathLike, *, window: int = WINDOW, skip_bad: bool = False):
        from obspy import UTCDateTime

        self.table = os.fspath(table_csv)
        self.window = int(window)
        if self.window < 1:
            raise ValueError(f"window must be positive, got {window}")
        folder = os.path.dirname(os.path.abspath(self.table))
        try:
            with open(self.table, newline="") as f:
                rows = list(csv.DictReader(f))
                columns = set(rows[0]) if rows else set()
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise SeismicDataError(f"{self.table}: unreadable pick table ({err})") from err
        missing = {"file", "p_time", "s_time"} - columns
        if not rows or missing:
            raise SeismicDataError(f"{self.table}: a pick table needs a header with file,p_time,s_time and "
                                   f"rows; {'no rows' if not rows else f'missing columns {sorted(missing)}'}")
        self.files: list[str] = []
        self.times: list[tuple[Any, Any]] = []  # per pick: None, seconds (float) or UTCDateTime
        self.rows: list[int] = []  # table line of each kept record (header = line 1)
        self.skipped: list[tuple[int, str]] = []
        self.labels: list[int] | None = [] if "label" in columns else None
        for line, row in enumerate(rows, start=2):
            name = (row["file"] or "").strip()
            if not name:
                raise SeismicDataError(f"{self.table} line {line}: empty file name")
            times = tuple(_pick_time(row[k], UTCDateTime, f"{self.table} line {line} {k}")
                          for k in ("p_time", "s_time"))
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                reason = f"{self.table} line {line}: no waveform file {path}"
                if not skip_bad:
                    raise SeismicDataError(reason)
                self.skipped.append((line, reason))
                continue
            if self.labels is not None:
                self.labels.append(_class_label(row["label"], f"{self.table} line {line}"))
            self.files.append(path)
            self.times.append(times)
            self.rows.append(line)
        if skip_bad:
            self._drop_unreadable()
        if not self.files:
            raise SeismicDataError(f"{self.table}: no readable records ({len(self.skipped)} skipped)")

    def _drop_unreadable(self) -> None:
        keep = []
        for i in range(len(self.files)):
            try:
                self[i]
            except SeismicDataError as err:
                self.skipped.append((self.rows[i], str(err)))
            else:
                keep.append(i)
        self.files, self.times, self.rows = ([x[i] for i in keep]
                                             for x in (self.files, self.times, self.rows))
        if self.labels is not None:
            self.labels = [self.labels[i] for i in keep]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        from seisfuse.data.readers import read_stream, stream_to_window

        path, line = self.files[index], self.rows[index]
        try:
            stream = read_stream(path)
            components = [tr for tr in stream if tr.stats.channel[-1:].upper() in "ZNE12"]
            start = max(tr.stats.starttime for tr in components or stream)
            waveform = stream_to_window(stream, start=start, length=self.window)
        except (ValueError, OSError) as err:  # SeismicDataError is a ValueError
            raise SeismicDataError(f"{self.table} line {line} ({path}): {err}") from err
        out = {"waveform": waveform}
        for key, time in zip(("p_sample", "s_sample"), self.times[index], strict=True):
            if time is None:
                sample = np.nan
            else:
                seconds = time if isinstance(time, float) else time - start
                sample = seconds * SAMPLING_RATE
                sample = sample if 0 <= sample < self.window else np.nan
            out[key] = np.float32(sample)
        if self.labels is not None:
            out["label"] = np.int32(self.labels[index])
        return out


def _class_label(text: str | None, where: str) -> int:
    try:
        value = int((text or "").strip())
    except ValueError:
        raise SeismicDataError(f"{where}: label {text!r} is not a class id (an integer >= 0)") from None
    if value < 0:
        raise SeismicDataError(f"{where}: label {value} is negative; class ids start at 0")
    return value


def _pick_time(text: str | None, utc, where: str):
    """None (empty), seconds from the record start (a number) or an absolute UTCDateTime."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not np.isfinite(seconds):
            raise SeismicDataError(f"{where}: pick time {text!r} is not finite")
        return seconds
    try:
        return utc(text)
    except Exception as err:  # obspy raises TypeError / ValueError for unparsable strings
        raise SeismicDataError(f"{where}: pick time {text!r} is neither seconds nor a UTC time "
                               f"({err})") from err


# ----------------------------------------------------------------------------- factory


SOURCES = ("synthetic", "dat", "seisbench", "pick_table")
_REQUIRED = {
    "synthetic": ("num_examples",),
    "dat": ("path", "task"),
    "seisbench": ("path",),
    "pick_table": ("path",),
}
_SPLITS = {
    "synthetic": ("train", "eval"),
    "dat": ("train", "val", "eval"),
    "seisbench": ("train", "dev", "test", "eval"),
    "pick_table": ("train", "eval"),
}


def make_source(data: Mapping, split: str | None = None) -> Any:
    """The source a config's `data` section names, for `split` (default `data.split`, else "train").

    "eval" always means the source's held-out split:
    - synthetic (num_examples, dataset_seed = 0; eval: eval_examples): training example i is
      generate_pair(dataset_seed, i); held-out example i is generate_pair(dataset_seed,
      EVAL_INDEX_OFFSET + i), disjoint from every training set of that seed.
    - dat (path, task, size = SFM's, train_count = SFM's): SFMTaskSource; eval = "val".
    - seisbench (path): readers.SeisBenchSource on its "train" / "dev" / "test" split; eval =
      data.eval_split (default "dev").
    - pick_table (path; eval: eval_path): PickTableSource with window (3001) and skip_bad (False).
    """
    kind = data.get("source")
    if kind not in SOURCES:
        raise ValueError(f"unknown data source {kind!r}, expected one of {SOURCES}")
    for key in _REQUIRED[kind]:
        if key not in data:
            raise ValueError(f"data source {kind!r} needs data.{key} (it takes {_REQUIRED[kind]})")
    split = split or data.get("split") or "train"
    if split not in _SPLITS[kind]:
        raise ValueError(f"data source {kind!r} has splits {_SPLITS[kind]}, got {split!r}")
    if kind == "synthetic":
        from seisfuse.data.pipeline import EVAL_INDEX_OFFSET, SyntheticSource

        seed = int(data.get("dataset_seed", 0))
        if split == "train":
            return SyntheticSource(int(data["num_examples"]), seed=seed)
        if "eval_examples" not in data:
            raise ValueError("the synthetic held-out split needs data.eval_examples (how many examples)")
        return SyntheticSource(int(data["eval_examples"]), seed=seed, offset=EVAL_INDEX_OFFSET)
    if kind == "dat":
        return SFMTaskSource(data["path"], "val" if split == "eval" else split, data["task"],
                             data.get("size"), train_count=data.get("train_count"))
    if kind == "seisbench":
        from seisfuse.data.readers import SeisBenchSource

        return SeisBenchSource(data["path"],
                               split=data.get("eval_split", "dev") if split == "eval" else split)
    if split == "eval" and "eval_path" not in data:
        raise ValueError("the pick_table held-out split needs data.eval_path (a second pick table CSV)")
    return PickTableSource(data["eval_path"] if split == "eval" else data["path"],
                           window=int(data.get("window", WINDOW)), skip_bad=bool(data.get("skip_bad", False)))
