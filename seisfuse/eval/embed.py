"""From inputs to joint-space embeddings: restore a trained alignment run, read items, embed them.

A run directory holds `config.json` (the experiment config, written by `seisfuse demo` or given
again with --config) and `checkpoints/` (the training engine's orbax checkpoints). Inputs are
normalised as in training (SFM's per-image z-score, SeisLM's per-channel demean / std).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from seisfuse.data.transforms import normalize_waveform, normalized_p_window, zscore_image
from seisfuse.train.config import RUN_CONFIG_FILE as CONFIG_FILE

IMAGE_SUFFIXES = (".npy", ".dat")
WAVEFORM_SUFFIXES = (".npy", ".mseed", ".miniseed", ".sac", ".gse2", ".seed")


class Embedder:
    """Batched, jitted embedding of one modality at a time with a JointEmbedding and its params."""

    def __init__(self, task: Any, params: Any, batch_size: int = 64,
                 p_window: Sequence[int] | None = None):
        self.task, self.params, self.batch_size = task, params, batch_size
        self.p_window = tuple(p_window) if p_window else None  # waveforms were trained P-aligned
        self.model = task.model
        self._fns: dict[str, Any] = {}

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.task.cfg.modalities

    def input_key(self, modality: str) -> str:
        return self.task.cfg.tower(modality).input_key

    def __call__(self, modality: str, items: np.ndarray) -> np.ndarray:
        """Unit embeddings [N, D] of items [N, ...] (already normalised) of one modality."""
        self.task.cfg.tower(modality)  # raises naming the modalities this model has
        if modality not in self._fns:
            apply = self.model.apply
            self._fns[modality] = jax.jit(lambda p, x: apply({"params": p}, {modality: x})[modality])
        items = np.asarray(items, np.float32)
        if len(items) == 0:
            raise ValueError(f"no {modality} items to embed")
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            pad = self.batch_size - len(chunk) if len(items) > self.batch_size else 0
            if pad:  # one compiled shape for every chunk
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(self._fns[modality](self.params, chunk))[:len(chunk) - pad])
        return np.concatenate(out)

    def embed_all(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{modality: embeddings} for a batch keyed like the data pipeline ('image', 'waveform')."""
        return {m: self(m, arrays[self.input_key(m)]) for m in self.modalities}


def load_run_config(run_dir: str | Path, spec: str | None = None,
                    overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The run's experiment config: `spec` (configs/x.py:variant) if given, else run_dir/config.json."""
    from seisfuse.train.config import load_config

    if spec:
        return load_config(spec, overrides)
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --config configs/align.py:VARIANT (the config the "
                                "run was trained with)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_params(task: Any, config: Mapping[str, Any], run_dir: str | Path) -> Any:
    """Params of the latest checkpoint under run_dir/checkpoints, placed on this host's mesh."""
    from seisfuse.train.checkpoint import Checkpointer
    from seisfuse.train.loop import Trainer

    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoints in {run_dir} (expected {directory})")
    trainer = Trainer(task, config)
    checkpointer = Checkpointer(directory)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        state, _ = checkpointer.restore(step, trainer.abstract_state)
    finally:
        checkpointer.close()
    return state.params


def load_embedder(run_dir: str | Path, spec: str | None = None, overrides: Sequence[str] = ()) -> Embedder:
    """An Embedder for a trained alignment run (`seisfuse demo --out DIR` or `seisfuse train`)."""
    from seisfuse.train.tasks import make_task

    config = load_run_config(run_dir, spec, overrides)
    if config.get("task") != "align":
        raise ValueError(f"{run_dir} is a {config.get('task')!r} run, not an alignment ('align') run")
    task = make_task(config)
    return Embedder(task, restore_params(task, config, run_dir),
                    p_window=config.get("data", {}).get("p_window"))


def list_inputs(paths: Sequence[str | Path], suffixes: Sequence[str]) -> list[Path]:
    """Files given directly, plus the files with a known suffix inside given folders (sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
            if not found:
                raise FileNotFoundError(f"no {'/'.join(suffixes)} files in folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


def read_items(files: Sequence[Path], input_key: str, image_size: int = 224,
               p_window: Sequence[int] | None = None) -> tuple[np.ndarray, list[str]]:
    """Normalised items [N, ...] and one name per item from image or waveform files.

    Images: .npy of [H, W], [H, W, 1] or a stack [N, H, W(, 1)]; SFM .dat patches. Waveforms:
    .npy of [T, 3] or [N, T, 3] (Z, N, E) at 100 Hz; anything obspy reads (one 3-C window per
    file, via seisfuse.data.readers.read_waveform). A stack gives names `file[i]`. With p_window
    (a run trained on P-aligned windows: samples before P, length) each waveform is cut around
    its automatic P pick (seisfuse.data.picking.pick_p) as in training.
    """
    items, names = [], []
    for path in files:
        stack = _read_one(path, input_key, image_size, p_window)
        items.append(stack)
        names += [path.name] if len(stack) == 1 else [f"{path.name}[{i}]" for i in range(len(stack))]
    return np.concatenate(items), names


def _read_one(path: Path, input_key: str, image_size: int, p_window: Sequence[int] | None) -> np.ndarray:
    if input_key == "image":
        if path.suffix.lower() == ".dat":
            from seisfuse.data.readers import read_dat

            return read_dat(path, (image_size, image_size))[None]
        array = np.load(path) if path.suffix.lower() == ".npy" else None
        if array is None:
            raise ValueError(f"{path}: images must be .npy or SFM .dat files")
        if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1 and array.shape[0] == image_size):
            array = array.reshape(1, *array.shape[:2])
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 3 or array.shape[1:] != (image_size, image_size):
            raise ValueError(f"{path}: expected a {image_size}x{image_size} image (or a stack of them), "
                             f"got shape {array.shape}")
        _check_finite(array, path)
        return np.stack([zscore_image(a[..., None]) for a in array])
    if input_key == "waveform":
        if path.suffix.lower() == ".npy":
            array = np.load(path)
        else:
            from seisfuse.data.readers import read_waveform

            array = read_waveform(path)
        array = array[None] if array.ndim == 2 else array
        if array.ndim != 3 or array.shape[-1] != 3:
            channels_first = array.ndim >= 2 and array.shape[-2] == 3
            hint = " (looks channels-first: seisfuse takes [T, 3])" if channels_first else ""
            raise ValueError(f"{path}: expected a 3-component waveform [T, 3] (or [N, T, 3]), got shape "
                             f"{array.shape}{hint}")
        _check_finite(array, path)
        if p_window:
            return np.stack([_p_aligned(w, p_window, path) for w in array])
        return np.stack([normalize_waveform(w) for w in array])
    raise ValueError(f"cannot read inputs for a tower fed by {input_key!r}")


def _p_aligned(waveform: np.ndarray, p_window: Sequence[int], path: Path) -> np.ndarray:
    from seisfuse.data.picking import pick_p

    try:
        pick = pick_p(waveform)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return normalized_p_window(waveform, pick, *p_window)


def _check_finite(array: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{path}: contains NaN or inf")


def guess_input_key(path: Path, image_size: int = 224) -> str:
    """'image' or 'waveform' from a file's format and array shape (for --modality auto)."""
    suffix = path.suffix.lower()
    if suffix == ".dat":
        return "image"
    if suffix != ".npy":
        return "waveform"  # obspy formats
    shape = np.load(path, mmap_mode="r").shape
    if shape[-1] == 3 and len(shape) in (2, 3) and shape[-2] != image_size:
        return "waveform"
    if shape[-2:] == (image_size, image_size) or shape[-3:] == (image_size, image_size, 1):
        return "image"
    raise ValueError(f"{path}: cannot tell an image from a waveform by its shape {shape}: pass --modality")


def save_embeddings(path: str | Path, embeddings: np.ndarray, names: Sequence[str], modality: str,
                    run_dir: str | Path) -> tuple[Path, Path]:
    """EMB.npy [N, D] plus EMB.json (modality, item names, run) for `seisfuse retrieve --gallery`."""
    path = Path(path)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(embeddings, np.float32))
    meta = path.with_suffix(".json")
    meta.write_text(json.dumps({"modality": modality, "run": str(run_dir), "names": list(names)}, indent=1))
    return path, meta


def load_embeddings(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings and their sidecar written by `save_embeddings`."""
    path = Path(path)
    meta = path.with_suffix(".json")
    if not path.is_file() or not meta.is_file():
        raise FileNotFoundError(f"{path} and {meta.name} beside it are needed (write them with "
                                "seisfuse embed)")
    embeddings = np.load(path)
    info = json.loads(meta.read_text())
    if embeddings.ndim != 2 or len(embeddings) != len(info.get("names", [])):
        raise ValueError(f"{path}: expected [N, D] embeddings with N = {len(info.get('names', []))} names "
                         f"in {meta.name}, got shape {embeddings.shape}")
    return embeddings, info
