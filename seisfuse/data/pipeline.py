"""grain input pipelines for the pretraining tasks (MAE images, SeisLM waveforms, paired
image+waveform) and the fine-tuning tasks (segment, regress, picking, classify).

    source (random access) → shard by JAX process → shuffle (reshuffled every epoch) → repeat
    → per-example task transform with its own seeded rng → batch → [worker processes]

Every random choice is a function of (seed, shard, index), so a pipeline gives the same batches
for a seed whatever the number of workers, and `iterator.get_state()` / `set_state()` restore
it exactly (the state is a small JSON-able dict; save it beside the model checkpoint).
Batches are dicts of numpy arrays: images [B, 224, 224, 1], waveforms [B, 3001, 3], pick
labels [B, 3001, 3] (P, S, noise); docs/data-downstream.md lists every task's batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import grain
import numpy as np

from seisfuse.data import transforms
from seisfuse.data.synthetic import generate_pair

Task = Literal["mae", "waveform", "paired", "picking", "segment", "regress", "classify"]
TASKS: tuple[str, ...] = ("mae", "waveform", "paired", "picking", "segment", "regress", "classify")
LABELLED_TASKS = ("segment", "regress", "classify")  # these read example[label_key]
# Synthetic held-out examples are the dataset seed's indices from here on; training sets must
# stay below it, so the two never share an example whatever their sizes.
EVAL_INDEX_OFFSET = 1 << 31
PAIR_METADATA = {
    "p_sample": np.int32,
    "s_sample": np.int32,
    "depth_km": np.float32,
    "distance_km": np.float32,
    "magnitude": np.float32,
}


class SyntheticSource:
    """`num_examples` physics-paired examples of dataset `seed`, generated on access: item i is
    `generate_pair(seed, offset + i)` (offset EVAL_INDEX_OFFSET gives the held-out set)."""

    def __init__(self, num_examples: int, seed: int = 0, offset: int = 0):
        self.num_examples, self.seed, self.offset = int(num_examples), int(seed), int(offset)
        if self.offset < EVAL_INDEX_OFFSET and self.offset + self.num_examples > EVAL_INDEX_OFFSET:
            raise ValueError(f"{self.num_examples} examples from index {self.offset} would reach the "
                             f"held-out indices (>= {EVAL_INDEX_OFFSET}); use fewer examples")

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        return generate_pair(self.seed, self.offset + int(index))


class ArraySource:
    """Equal-length arrays as a source: `ArraySource(image=patches)` yields {"image": patches[i]}."""

    def __init__(self, **arrays: np.ndarray):
        lengths = {k: len(v) for k, v in arrays.items()}
        if not arrays or len(set(lengths.values())) != 1:
            raise ValueError(f"need one or more arrays of equal length, got {lengths}")
        self.arrays = arrays
        self.length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self.arrays.items()}


class DatSource:
    """SFM-style folder of `.dat` patches (one z-scored [H, W, 1] image each)."""

    def __init__(self, paths: Sequence[str], shape: Sequence[int] = (224, 224)):
        self.paths, self.shape = list(paths), tuple(shape)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        from seisfuse.data.readers import read_dat

        return {"image": read_dat(self.paths[index], self.shape)}


@dataclasses.dataclass(frozen=True)
class TaskTransform:
    """Turns a source example into the model input of one task (a grain RandomMap callable).

    label_key names the example's label for segment (an [H, W] class map), regress (the target
    map: transforms.REGRESS_TARGETS) and classify (an integer, or a transforms.DERIVED_CLASSES
    name).
    """

    task: str
    augment: bool = False
    p_window: tuple[int, int] | None = None  # paired: (samples before P, length), first motion up
    label_key: str | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}, expected one of {TASKS}")
        if self.task in LABELLED_TASKS and not self.label_key:
            raise ValueError(f"task {self.task!r} needs label_key (the example key holding its label, "
                             "e.g. 'facies' or 'salt' for segment, 'clean', 'reflectivity' or 'image' for "
                             "regress, 'distance_class' or 'magnitude_class' for classify)")
        if self.task == "regress" and self.label_key not in transforms.REGRESS_TARGETS:
            raise ValueError(f"regress label_key {self.label_key!r} is not one of "
                             f"{tuple(transforms.REGRESS_TARGETS)}")

    def __call__(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.task == "mae":
            return {"image": transforms.zscore_image(example["image"])}
        if self.task == "paired":
            return self._paired(example, rng)
        if self.task in ("segment", "regress"):
            return self._image_task(example, rng)
        if self.task == "picking":
            return self._picking(example, rng)
        waveform = self._waveform(example, rng)
        if self.task == "waveform":
            return {"waveform": waveform}
        return {"waveform": waveform, "label": transforms.class_label(example, self.label_key)}

    def _paired(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        ex = transforms.augment_pair(example, rng) if self.augment else dict(example)
        if self.p_window is not None:
            before, length = self.p_window
            ex["waveform"] = transforms.p_window(ex["waveform"], float(ex["p_sample"]), before, length)
            shift = int(round(float(ex["p_sample"]))) - before
            for key in ("p_sample", "s_sample"):
                if key in ex and int(ex[key]) >= 0:  # -1 = missing pick, stays missing
                    ex[key] = int(ex[key]) - shift
        out = {
            "image": transforms.zscore_image(ex["image"]),
            "waveform": transforms.normalize_waveform(ex["waveform"]),
        }
        out.update({k: np.asarray(ex[k], dtype) for k, dtype in PAIR_METADATA.items() if k in ex})
        return out

    def _waveform(self, example: dict, rng: np.random.Generator) -> np.ndarray:
        """A normalised 3001-sample window (a random one for longer records or with augment)."""
        waveform = np.asarray(example["waveform"], np.float32)
        if waveform.shape[0] != transforms.WINDOW or self.augment:
            waveform, _ = transforms.random_window(waveform, rng, max_pad=300 if self.augment else 0)
        return transforms.normalize_waveform(waveform)

    def _image_task(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.label_key not in example:
            raise ValueError(f"{self.task}: the example has no {self.label_key!r} (it has {sorted(example)})")
        image, label = example["image"], np.asarray(example[self.label_key])
        if self.augment and rng.random() < 0.5:
            image, label = transforms.flip_lr(image, label)
        if self.task == "regress":
            x, y = transforms.regression_pair(image, label, self.label_key)
            return {"image": x, "target": y}
        if label.ndim == 3 and label.shape[-1] == 1:
            label = label[..., 0]
        whole = np.array_equal(label, np.round(label)) and label.min() >= 0
        if label.shape != np.shape(image)[:2] or not whole:
            raise ValueError(f"segment label {self.label_key!r} must be integer classes >= 0 of the image's "
                             f"size {np.shape(image)[:2]}, got shape {label.shape}")
        return {"image": transforms.zscore_image(image), "label": label.astype(np.int32)}

    def _picking(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        waveform = np.asarray(example["waveform"], np.float32)
        picks = {"p": _pick(example, "p_sample"), "s": _pick(example, "s_sample")}
        if self.augment:
            waveform, picks = transforms.seislm_pick_window(waveform, picks, rng)
            waveform = transforms.fill_dead_channels(waveform, rng)
        elif waveform.shape[0] != transforms.WINDOW:
            waveform, picks = transforms.random_window(waveform, rng, picks=picks)
        inside = {k: v if 0 <= v < transforms.WINDOW else np.nan for k, v in picks.items()}
        return {
            "waveform": transforms.normalize_waveform(waveform),
            "labels": transforms.pick_labels(picks["p"], picks["s"]),
            "p_sample": np.float32(inside["p"]),
            "s_sample": np.float32(inside["s"]),
        }


def _pick(example: dict, key: str) -> float:
    """A pick's sample index in the record; NaN when absent (missing key, NaN, or the -1 that
    marks a missing pick, as any index before the record does)."""
    value = float(example.get(key, np.nan))
    return value if np.isfinite(value) and value >= 0 else np.nan


def _process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if (shard_index is None) != (shard_count is None):
        raise ValueError("give both shard_index and shard_count, or neither (then JAX's process index/count)")
    if shard_index is None:
        import jax

        return jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    return shard_index, shard_count


def _absl_flags_parsed() -> None:
    """grain's worker processes read an absl flag, which fails in scripts that do not use
    absl.app (google/grain#1355); marking the still-default flags as parsed is harmless."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_dataset(
    source,
    *,
    task: Task,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    augment: bool = False,
    drop_remainder: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_workers: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 1,
    prefetch: int = 2,
    p_window: tuple[int, int] | None = None,
    label_key: str | None = None,
) -> grain.IterDataset:
    """A grain pipeline yielding batches (dicts of numpy arrays) for `task`.

    source: anything with __len__ and __getitem__ returning dicts (`SyntheticSource`,
    `ArraySource`, `DatSource`, `readers.SeisBenchSource`, `tfds.data_source(...)`).
    This host reads the examples i ≡ shard_index (mod shard_count), by default
    jax.process_index() / jax.process_count(); batch_size is per host. num_epochs None repeats
    forever. num_workers > 0 runs the per-example work in that many processes (same output);
    each process builds batches with `read_threads` threads and keeps `prefetch` batches ready
    (grain's defaults, 16 threads and 500 batches, would flood a small host). p_window
    (paired task): cut each waveform to (samples before P, length) around its P pick, first motion
    up (transforms.p_window). label_key (segment, regress, classify): the example key holding the
    label; None takes the source's own `label_key` attribute (`sources.SFMTaskSource` has one).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    index, count = _process_shard(shard_index, shard_count)
    ds = grain.MapDataset.source(source)
    if len(ds) == 0:
        raise ValueError("the source is empty")
    ds = ds[index::count]
    if len(ds) == 0:
        raise ValueError(f"shard {index}/{count} of a {len(source)}-example source is empty")
    if shuffle:
        ds = ds.shuffle(seed=seed + index)
    ds = ds.repeat(num_epochs)
    window = None if p_window is None else (int(p_window[0]), int(p_window[1]))
    label_key = label_key if label_key is not None else getattr(source, "label_key", None)
    transform = TaskTransform(task, augment, window, label_key)
    ds = ds.random_map(transform, seed=seed + 7919 * index + 1)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        _absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=worker_buffer_size)
        )
    return it_ds
