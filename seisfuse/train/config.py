"""Experiment configs: Python files in configs/ with `get_config(arg)`, plus command-line overrides."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from etils import epath


def loop_defaults() -> ml_collections.ConfigDict:
    """Settings every task shares; configs/*.py start from these."""
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
        "eps": 1e-8, "clip_norm": 0.0, "accumulate": 1, "layer_decay": 1.0})
    c.data = ml_collections.ConfigDict({"source": "random"})
    c.wandb = ml_collections.ConfigDict({"mode": "offline", "project": "seisfuse"})
    c.tensorboard = True
    return c


RUN_CONFIG_FILE = "config.json"


def save_run_config(run_dir: str | Path | epath.Path, config: ml_collections.ConfigDict) -> epath.Path:
    """Write the experiment config beside the checkpoints (atomically), so a run can be rebuilt
    later (`seisfuse embed/retrieve`, evaluation) without the original config file."""
    path = epath.Path(run_dir) / RUN_CONFIG_FILE
    tmp = path.parent / f".{RUN_CONFIG_FILE}.tmp"
    tmp.write_text(config.to_json(indent=2))
    tmp.replace(path)
    return path


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """'configs/mae_pretrain.py:tiny' -> get_config('tiny'), then apply 'a.b=value' overrides."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"seisfuse_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return apply_overrides(module.get_config(arg) if arg else module.get_config(), overrides)


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
