"""Experiment configs: Python modules with `get_config(variant)` (the packaged ones in seisfuse/configs,
or any file by its path), the defaults every config starts from, and command-line overrides."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pkgutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from etils import epath


def loop_defaults() -> ml_collections.ConfigDict:
    """Settings every task shares; every config starts from these and updates them, so each key the
    engine, the tasks and evaluation read exists in every config (and old runs' config.json files get
    the keys added since from here, see `read_run_config`)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100
    c.batch_size = 8
    c.log_every = 10
    c.checkpoint_every = 50
    c.keep_checkpoints = 3
    c.on_nonfinite = "stop"  # or "skip"
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.optimizer = ml_collections.ConfigDict({
        "lr": 1e-3, "warmup_steps": 10, "end_lr": 0.0, "weight_decay": 0.0, "b1": 0.9, "b2": 0.999,
        "eps": 1e-8, "clip_norm": 0.0, "accumulate": 1, "layer_decay": 1.0,
        "unfreeze_step": 0})  # groups labelled ':delayed' train from this step on
    c.model = ml_collections.ConfigDict({"dtype": "float32"})  # compute dtype; params stay float32
    c.data = ml_collections.ConfigDict({
        "source": "random",  # or a seisfuse.data.sources source, with its own keys
        "num_workers": 0,  # grain worker processes (0: read in the training process)
        "p_window": None,  # [samples before P, length]: waveforms cut around P; None: whole records
        "augment": False,
        "label_key": None,  # the example key a fine-tuning task learns (None: the task's own)
    })
    c.wandb = ml_collections.ConfigDict({"mode": "offline", "project": "seisfuse"})
    c.tensorboard = True
    return c


RUN_CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
# Keys a resumed run may change (each change is recorded): how long to train and how to report it.
RESUMABLE_KEYS = ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "wandb", "tensorboard")


def save_run_config(run_dir: str | Path | epath.Path, config: ml_collections.ConfigDict,
                    changes: dict[str, tuple[Any, Any]] | None = None) -> epath.Path:
    """Write the experiment config beside the checkpoints (atomically), so a run can be rebuilt
    later (`seisfuse embed/retrieve/evaluate`) without the original config file. `changes` (a
    resumed run's {key: (old, new)}) are appended to config_history.jsonl first."""
    run_dir = epath.Path(run_dir)
    if changes:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "changes": {k: list(v) for k, v in changes.items()}}
        history = run_dir / CONFIG_HISTORY_FILE
        previous = history.read_text() if history.exists() else ""
        _write_atomic(history, previous + json.dumps(record) + "\n")
    path = run_dir / RUN_CONFIG_FILE
    _write_atomic(path, config.to_json(indent=2))
    return path


def _write_atomic(path: epath.Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


def read_run_config(run_dir: str | Path | epath.Path) -> ml_collections.ConfigDict:
    """A run's saved config.json, with any setting added to `loop_defaults` since the run was made
    filled in from the defaults (old runs keep loading)."""
    path = epath.Path(run_dir) / RUN_CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a seisfuse run: no {RUN_CONFIG_FILE} (expected the "
                                "--workdir of `seisfuse train/finetune` or the --out of `seisfuse demo`)")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): the run's config is damaged") from exc
    return with_defaults(saved)


def with_defaults(config: Mapping[str, Any] | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` over `loop_defaults()`: every setting the engine, the tasks and evaluation read is
    present, even where a config replaced a whole section or predates a setting."""
    merged = loop_defaults().to_dict()
    _merge(merged, config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config)
    return ml_collections.ConfigDict(merged)


def _merge(base: dict, update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def resume_changes(run_dir: str | Path | epath.Path,
                   config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, new)} for the resumable keys a resumed run changes; any other difference from
    the run's saved config raises, naming the keys (the run would silently become another)."""
    if not (epath.Path(run_dir) / RUN_CONFIG_FILE).exists():
        return {}
    saved = flatten_tree(read_run_config(run_dir).to_dict())
    new = flatten_tree(with_defaults(json.loads(config.to_json())).to_dict())
    differ = {k: (saved.get(k), new.get(k)) for k in sorted(set(saved) | set(new))
              if saved.get(k) != new.get(k)}
    fixed = {k: v for k, v in differ.items() if k.split(".")[0] not in RESUMABLE_KEYS}
    if fixed:
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(fixed.items())[:8])
        raise ValueError(f"--resume with a recipe that differs from the run's config.json ({shown}): resume "
                         f"with the same config (only {', '.join(RESUMABLE_KEYS)} may change) or use a "
                         "new workdir")
    return differ


def flatten_tree(tree: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {'a.b': value} (`sep` between the keys); other values stay as they are."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten_tree(value, sep, f"{prefix}{key}{sep}"))
        else:
            out[f"{prefix}{key}"] = value
    return out


CONFIG_PACKAGE = "seisfuse.configs"


def packaged_configs() -> tuple[str, ...]:
    """Names of the configs installed with the package (`align`, `mae_pretrain`, ...)."""
    package = importlib.import_module(CONFIG_PACKAGE)
    return tuple(sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")))


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """'align:tiny' (a packaged config by name) or 'configs/align.py:tiny' (any file by its path) ->
    get_config('tiny') (get_config() when no ':variant') over `loop_defaults()`, then the
    'a.b=value' overrides."""
    source, _, variant = spec.partition(":")
    module = _config_module(source)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"config {source} has no get_config(variant) function")
    config = module.get_config(variant) if variant else module.get_config()
    return apply_overrides(with_defaults(config), overrides)


def _config_module(source: str) -> Any:
    """The module of a config named by path (ends in .py or has a folder) or by packaged name."""
    names = packaged_configs()
    if source.endswith(".py") or "/" in source or "\\" in source:
        path = Path(source)
        if not path.is_file():
            hint = f"; the packaged one loads by name: {path.stem}:VARIANT" if path.stem in names else ""
            raise FileNotFoundError(f"config file not found: {source}{hint}")
        module_spec = importlib.util.spec_from_file_location(f"seisfuse_config_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    if source not in names:
        raise ValueError(f"unknown config {source!r}: name a packaged config ({', '.join(names)}), e.g. "
                         "align:tiny, or give a path to a .py file with get_config(variant)")
    return importlib.import_module(f"{CONFIG_PACKAGE}.{source}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """config with each 'a.b=value' set (value a Python literal, else a string); unknown keys raise."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key.path=value")
        _set(config, key.removeprefix("--").removeprefix("config."), raw)
    return config


def _set(config: ml_collections.ConfigDict, dotted: str, raw: str) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
        if name not in node:
            raise KeyError(f"unknown config section {dotted!r}")
        node = node[name]
    if leaf not in node:
        raise KeyError(f"unknown config key {dotted!r}")
    current = node[leaf]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(current, bool) and isinstance(value, (str, int)):
        value = str(value).lower() in ("1", "true", "yes")
    elif isinstance(current, float) and isinstance(value, int):
        value = float(value)
    node[leaf] = value
