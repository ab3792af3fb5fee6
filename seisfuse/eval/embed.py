"""From inputs to joint-space embeddings: restore a trained alignment run, read items, embed them.

A run directory holds `config.json` (the experiment config, written by `seisfuse demo` or given
again with --config) and `checkpoints/` (the training engine's orbax checkpoints; only the params
of the newest intact one are read). Inputs are normalised as in training (SFM's per-image z-score,
SeisLM's per-channel demean / std).

Every input is checked before it reaches the model (real numbers, the right shape, finite, every
waveform component present unless `pad=True`), every output after (finite embeddings), and a
gallery records the identity of the run that embedded it (`run_identity`) so `check_retrieval`
can refuse a gallery from another run.
"""

from __future__ import annotations

import hashlib
import json
import os
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
                 p_window: Sequence[int] | None = None, identity: Mapping[str, Any] | None = None):
        self.task, self.params, self.batch_size = task, params, batch_size
        self.p_window = tuple(p_window) if p_window else None  # waveforms were trained P-aligned
        self.identity = dict(identity) if identity else None  # run_identity() of a restored run
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
        items = np.asarray(items)
        if not (np.issubdtype(items.dtype, np.integer) or np.issubdtype(items.dtype, np.floating)):
            raise ValueError(f"{modality} items must be real numbers, got dtype {items.dtype}")
        items = items.astype(np.float32)
        if items.ndim == 0 or len(items) == 0:
            raise ValueError(f"no {modality} items to embed")
        _check_finite(items, f"{modality} items")
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            pad = self.batch_size - len(chunk) if len(items) > self.batch_size else 0
            if pad:  # one compiled shape for every chunk
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(self._fns[modality](self.params, chunk))[:len(chunk) - pad])
        embeddings = np.concatenate(out)
        bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
        if bad.size:
            raise ValueError(f"the model gave non-finite {modality} embeddings for {bad.size} item(s) "
                             f"(indices {bad[:10].tolist()}): the checkpoint's params are damaged")
        return embeddings

    def embed_all(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{modality: embeddings} for a batch keyed like the data pipeline ('image', 'waveform')."""
        return {m: self(m, arrays[self.input_key(m)]) for m in self.modalities}


def load_run_config(run_dir: str | Path, spec: str | None = None,
                    overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The run's experiment config: `spec` (align:VARIANT or a config file's path) if given, else
    run_dir/config.json (with any setting added since the run was made at its default)."""
    from seisfuse.train.config import load_config, read_run_config

    if spec:
        return load_config(spec, overrides)
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --config align:VARIANT (the config the run was "
                                "trained with)")
    return read_run_config(run_dir)


def run_identity(config: Mapping[str, Any], step: int) -> dict[str, Any]:
    """What identifies a trained run's weights: a hash of its config (less the settings a resume may
    change) and the checkpoint step. Recorded in a gallery's JSON by `save_embeddings`."""
    from seisfuse.train.config import RESUMABLE_KEYS

    plain = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    recipe = {k: v for k, v in plain.items() if k not in RESUMABLE_KEYS}
    text = json.dumps(recipe, sort_keys=True, default=str)
    return {"config_sha256": hashlib.sha256(text.encode()).hexdigest(), "step": int(step)}


def restore_params(task: Any, run_dir: str | Path) -> tuple[int, Any]:
    """(step, params) of the newest intact checkpoint under run_dir/checkpoints, checked against the
    params the task's config builds (no Trainer, no optimizer state is read)."""
    import flax.linen as nn

    from seisfuse.train.checkpoint import restore_items

    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoints in {run_dir} (expected {directory})")
    trees, step = restore_items(directory, ("params",))
    params = trees["params"]
    expected = jax.eval_shape(lambda: nn.unbox(task.init_params(jax.random.key(0))))
    shape = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)  # noqa: E731
    if jax.tree.structure(expected) != jax.tree.structure(params) or shape(expected) != shape(params):
        raise ValueError(f"the checkpoint at step {step} in {directory} does not hold the params this "
                         "run's config builds: pass the config the run was trained with (--config)")
    return step, params


def load_embedder(run_dir: str | Path, spec: str | None = None, overrides: Sequence[str] = ()) -> Embedder:
    """An Embedder for a trained alignment run (`seisfuse demo --out DIR` or `seisfuse train`)."""
    from seisfuse.train.tasks import make_task

    config = load_run_config(run_dir, spec, overrides)
    if config["task"] != "align":
        raise ValueError(f"{run_dir} is a {config['task']!r} run, not an alignment ('align') run")
    task = make_task(config)
    step, params = restore_params(task, run_dir)
    return Embedder(task, params, p_window=config["data"]["p_window"],
                    identity=run_identity(config, step))


def list_inputs(paths: Sequence[str | Path], suffixes: Sequence[str]) -> list[Path]:
    """Files given directly, plus the files with a known suffix inside given folders (sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
            if not found:
                raise FileNotFoundError(f"no {'/'.join(suffixes)} files in folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return files


def read_items(files: Sequence[Path], input_key: str, image_size: int = 224,
               p_window: Sequence[int] | None = None, *, pad: bool = False) -> tuple[np.ndarray, list[str]]:
    """Normalised items [N, ...] and one name per item from image or waveform files.

    Images: .npy of [H, W], [H, W, 1] or a stack [N, H, W(, 1)]; SFM .dat patches. Waveforms:
    .npy of [T, 3] or [N, T, 3] (Z, N, E) at 100 Hz; anything obspy reads, one 3-C record per
    instrument, with files holding one component each joined into 3-C records
    (seisfuse.data.readers.waveform_records; these come after the .npy items). A stack gives
    names `file[i]`. With p_window
    (a run trained on P-aligned windows: samples before P, length) each waveform is cut around
    its automatic P pick (seisfuse.data.picking.pick_p) as in training.

    A record missing a component, with a dead (constant) one, or with one that ends before the
    window does is an error, since a file cut short looks exactly like that; `pad=True` zero-fills
    them instead (each repair with a RepairWarning), as SeisLM's training data were.
    """
    items, names = [], []
    records = []  # obspy files are read together: their components may be spread over files
    for path in map(Path, files):
        if input_key == "waveform" and path.suffix.lower() != ".npy":
            records.append(path)
            continue
        stack = _read_one(path, input_key, image_size, p_window)
        items.append(stack)
        names += [path.name] if len(stack) == 1 else [f"{path.name}[{i}]" for i in range(len(stack))]
    if records:
        for name, window in _read_records(records, pad):
            items.append(_waveforms(window[None], name, p_window))
            names.append(name)
    if not items:
        raise ValueError("no input files to read")
    return np.concatenate(items), names


def _read_records(files: Sequence[Path], pad: bool) -> list[tuple[str, np.ndarray]]:
    """(name, [3001, 3] window) per 3-C record in obspy-readable files (see `read_items`)."""
    from seisfuse.data.readers import SeismicDataError, stream_to_window, waveform_records
    from seisfuse.data.transforms import WINDOW

    out = []
    for name, stream, instrument in waveform_records(files):
        try:  # max_pad 50: a 30 s record holds 3000 of the window's 3001 samples
            window = stream_to_window(stream, instrument=instrument, missing="zeros" if pad else "raise",
                                      max_pad=WINDOW if pad else 50)
        except SeismicDataError as err:
            hint = "" if pad else " (pass pad=True, --pad, to zero-fill what is missing)"
            raise SeismicDataError(f"{name}: {err}{hint}") from err
        out.append((name, window))
    return out


def _load_npy(path: Path) -> np.ndarray:
    """A .npy file's array, refused unless it holds real numbers with at least one dimension."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # not .npy, truncated, object arrays (pickles are never loaded)
        raise ValueError(f"{path}: not a readable .npy array ({type(err).__name__}: {err})") from err
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: holds several arrays (.npz); save one array per .npy file")
    if np.iscomplexobj(array):
        raise ValueError(f"{path}: complex values; save the real part, or the amplitude, explicitly")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{path}: dtype {array.dtype}, expected real numbers")
    if array.ndim == 0 or array.size == 0:
        raise ValueError(f"{path}: holds {'a scalar' if array.ndim == 0 else 'no values'} "
                         f"(shape {array.shape}), not an image or a waveform")
    return array


def _rescaled(item: np.ndarray) -> np.ndarray:
    """The item in float32, scaled by a power of two if its values are so large that float32
    statistics overflow (squares beyond 3e38 made NaN embeddings); z-scores are scale-free, so
    only the overflow changes."""
    item = np.asarray(item, np.float64)
    peak = float(np.max(np.abs(item)))
    if peak > 2.0**40:
        item = item * 2.0 ** (40 - np.ceil(np.log2(peak)))
    return item.astype(np.float32)


def _read_one(path: Path, input_key: str, image_size: int, p_window: Sequence[int] | None) -> np.ndarray:
    if input_key == "image":
        if path.suffix.lower() == ".dat":
            from seisfuse.data.readers import read_dat

            return read_dat(path, (image_size, image_size))[None]
        if path.suffix.lower() != ".npy":
            raise ValueError(f"{path}: images must be .npy or SFM .dat files")
        array = _load_npy(path)
        if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1 and array.shape[0] == image_size):
            array = array.reshape(1, *array.shape[:2])
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 3 or array.shape[1:] != (image_size, image_size):
            raise ValueError(f"{path}: expected a {image_size}x{image_size} image (or a stack of them), "
                             f"got shape {array.shape}")
        _check_finite(array, path)
        images = np.stack([zscore_image(_rescaled(a)[..., None]) for a in array])
        _check_finite(images, path)
        return images
    if input_key == "waveform":  # .npy; obspy formats go through _read_records
        array = _load_npy(path)
        array = array[None] if array.ndim == 2 else array
        if array.ndim != 3 or array.shape[-1] != 3:
            channels_first = array.ndim >= 2 and array.shape[-2] == 3
            hint = " (looks channels-first: seisfuse takes [T, 3])" if channels_first else ""
            raise ValueError(f"{path}: expected a 3-component waveform [T, 3] (or [N, T, 3]), got shape "
                             f"{array.shape}{hint}")
        return _waveforms(array, path, p_window)
    raise ValueError(f"cannot read inputs for a tower fed by {input_key!r}")


def _waveforms(array: np.ndarray, name: Any, p_window: Sequence[int] | None) -> np.ndarray:
    """Normalised (or P-aligned and normalised) waveforms [N, T', 3] of raw ones [N, T, 3]."""
    _check_finite(array, name)
    waves = [_rescaled(w) for w in array]
    if p_window:
        out = np.stack([_p_aligned(w, p_window, name) for w in waves])
    else:
        out = np.stack([normalize_waveform(w) for w in waves])
    _check_finite(out, name)
    return out


def _p_aligned(waveform: np.ndarray, p_window: Sequence[int], path: Any) -> np.ndarray:
    from seisfuse.data.picking import pick_p

    try:
        pick = pick_p(waveform)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return normalized_p_window(waveform, pick, *p_window)


def _check_finite(array: np.ndarray, path: Any) -> None:
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{path}: contains NaN or inf")


def guess_input_key(path: Path, image_size: int = 224) -> str:
    """'image' or 'waveform' from a file's format and array shape (for --modality auto)."""
    suffix = path.suffix.lower()
    if suffix == ".dat":
        return "image"
    if suffix != ".npy":
        return "waveform"  # obspy formats
    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except Exception as err:
        raise ValueError(f"{path}: not a readable .npy array ({type(err).__name__}: {err})") from err
    if len(shape) >= 2 and shape[-1] == 3 and len(shape) in (2, 3) and shape[-2] != image_size:
        return "waveform"
    if shape[-2:] == (image_size, image_size) or shape[-3:] == (image_size, image_size, 1):
        return "image"
    raise ValueError(f"{path}: cannot tell an image from a waveform by its shape {shape}: pass --modality")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def save_embeddings(path: str | Path, embeddings: np.ndarray, names: Sequence[str], modality: str,
                    run_dir: str | Path, *, identity: Mapping[str, Any] | None = None,
                    inputs: Sequence[str | Path] = (), overwrite: bool = False) -> tuple[Path, Path]:
    """EMB.npy [N, D] plus EMB.json (modality, item names, run and its `identity`) for
    `seisfuse retrieve --gallery`.

    Never writes over one of `inputs`; an existing EMB.npy/EMB.json is replaced only with
    overwrite=True. Both files are written beside the target and renamed into place.
    """
    path = Path(path)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    meta = path.with_suffix(".json")
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != len(names):
        raise ValueError(f"expected [N, D] embeddings for N = {len(names)} names, "
                         f"got shape {embeddings.shape}")
    _check_finite(embeddings, "embeddings")
    for out in (path, meta):
        for source in map(Path, inputs):
            if _same_file(out, source):
                raise ValueError(f"the output {out} is the input {source}: choose another --out")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists: pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"modality": modality, "run": str(run_dir), "identity": dict(identity) if identity else None,
              "names": [str(n) for n in names]}
    for out, write in ((path, lambda f: np.save(f, embeddings.astype(np.float32))),
                       (meta, lambda f: f.write(json.dumps(record, indent=1).encode()))):
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "wb") as handle:
            write(handle)
        tmp.replace(out)
    return path, meta


def load_embeddings(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Embeddings and their sidecar written by `save_embeddings`, checked against each other."""
    path = Path(path)
    meta = path.with_suffix(".json")
    if not path.is_file() or not meta.is_file():
        raise FileNotFoundError(f"{path} and {meta.name} beside it are needed (write them with "
                                "seisfuse embed)")
    try:
        embeddings = np.load(path, allow_pickle=False)
        info = json.loads(meta.read_text())
    except Exception as err:  # garbled .npy, invalid JSON, bad encoding
        raise ValueError(f"{path} / {meta.name} are not a gallery written by seisfuse embed "
                         f"({type(err).__name__}: {err})") from err
    names = info.get("names") if isinstance(info, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
            or not isinstance(info.get("modality"), str):
        raise ValueError(f"{meta}: expected a JSON object with a 'modality' and a list of item 'names'")
    if not isinstance(embeddings, np.ndarray) or not np.issubdtype(embeddings.dtype, np.floating) \
            or embeddings.ndim != 2 or len(embeddings) != len(names):
        raise ValueError(f"{path}: expected [N, D] float embeddings with N = {len(names)} names "
                         f"in {meta.name}, got shape {getattr(embeddings, 'shape', None)}")
    _check_finite(embeddings, path)
    return embeddings, info


def check_retrieval(info: Mapping[str, Any], embedder: Embedder, modality: str, k: int,
                    gallery: str | Path = "the gallery") -> int:
    """The number of neighbours to show (k, at most the gallery's size) once the query makes sense:
    the gallery was embedded by this very run (same `run_identity`), holds the other modality of
    this model, and k is at least 1. Otherwise ValueError saying what to do."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive number of neighbours, got {k!r}")
    recorded = info.get("identity")
    if not recorded:
        raise ValueError(f"{gallery} records no run identity (written by an older seisfuse): embed the "
                         "gallery again with this run")
    if embedder.identity is None:
        raise ValueError("this embedder was not restored from a run (no identity to compare)")
    if dict(recorded) != embedder.identity:
        raise ValueError(f"{gallery} was embedded by another run or checkpoint (config "
                         f"{str(recorded.get('config_sha256'))[:12]}, step {recorded.get('step')}) than this "
                         f"one (config {embedder.identity['config_sha256'][:12]}, step "
                         f"{embedder.identity['step']}): embed the gallery again with this run")
    other = info.get("modality")
    if other not in embedder.modalities:
        raise ValueError(f"{gallery} holds {other!r} embeddings; this model's modalities are "
                         f"{list(embedder.modalities)}")
    if other == modality:
        raise ValueError(f"the query is a {modality} and so is {gallery}: retrieve searches across "
                         "modalities; embed the gallery from the other modality")
    return int(min(k, len(info["names"])))
