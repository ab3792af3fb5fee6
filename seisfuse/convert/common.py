"""What every converter shares: key/shape checking, float32 casting, and the converted-directory format.

A converted directory holds `config.json` ({"model": kind, "config": {...}, ...}) and an orbax
checkpoint of the params under `params/`; both are written atomically, so an interrupted conversion
never leaves a directory that loads.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seisfuse.convert.torch_format import CheckpointError

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def check_state_dict(state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]],
                     what: str) -> list[str]:
    """Raise CheckpointError naming every missing or mis-shaped key; return the unused keys (sorted)."""
    missing = [k for k in expected if k not in state]
    wrong = [f"{k}: file {tuple(np.shape(state[k]))}, expected {shape}"
             for k, shape in expected.items() if k in state and tuple(np.shape(state[k])) != shape]
    if missing or wrong:
        lines = [f"{what}: the checkpoint does not match the inferred configuration."]
        if missing:
            lines.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
        if wrong:
            lines.append(f"wrong shapes ({len(wrong)}): " + "; ".join(wrong))
        raise CheckpointError("\n".join(lines))
    return sorted(k for k in state if k not in expected)


def float32(array: np.ndarray) -> np.ndarray:
    """Checkpoints may hold fp16/bf16 weights; the Flax params are float32 master weights."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
        raise CheckpointError(f"expected a floating-point weight, got dtype {array.dtype}")
    return array.astype(np.float32)


def linear(state: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
    """torch Linear weight [out, in] / bias -> Flax Dense kernel [in, out] / bias."""
    return {"kernel": float32(state[f"{key}.weight"]).T, "bias": float32(state[f"{key}.bias"])}


def norm(state: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
    """torch LayerNorm weight / bias -> Flax scale / bias."""
    return {"scale": float32(state[f"{key}.weight"]), "bias": float32(state[f"{key}.bias"])}


def linear_back(p: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
    return {f"{key}.weight": np.asarray(p["kernel"]).T, f"{key}.bias": np.asarray(p["bias"])}


def norm_back(p: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
    return {f"{key}.weight": np.asarray(p["scale"]), f"{key}.bias": np.asarray(p["bias"])}


def to_jax(params: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict of numpy arrays -> the same of jax arrays."""
    return {k: to_jax(v) if isinstance(v, Mapping) else jnp.asarray(v) for k, v in params.items()}


def report_unused(loader: str, path: Any, unused: list[str], what: str) -> None:
    """Warn about checkpoint keys a converter did not use (fine-tuning heads and the like)."""
    if unused:
        shown = ", ".join(unused[:12]) + (" ..." if len(unused) > 12 else "")
        warnings.warn(f"{loader}: {len(unused)} keys in {path} are not part of {what} and were "
                      f"ignored: {shown}", stacklevel=3)


def find_state_dict(checkpoint: Any, containers: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The flat {key: array} mapping inside a checkpoint: under one of `containers`, or the file itself."""
    if isinstance(checkpoint, Mapping):
        for key in containers:
            if isinstance(checkpoint.get(key), Mapping):
                return dict(checkpoint[key])
        if checkpoint and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
            return dict(checkpoint)
        found = ", ".join(map(repr, list(checkpoint)[:10]))
        raise CheckpointError(f"no state_dict found: expected one of {containers} or a flat "
                              f"mapping of tensors; the file holds keys {found}")
    raise CheckpointError(f"no state_dict found: the file holds a {type(checkpoint).__name__}")


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(tmp, path)


def save_converted(out_dir: str | Path, kind: str, config: dict[str, Any], params: Any,
                   **extra: Any) -> Path:
    """Write params (orbax) and config.json into out_dir; refuses to overwrite existing params."""
    import orbax.checkpoint as ocp

    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / PARAMS_DIR).exists():
        raise FileExistsError(f"{out_dir / PARAMS_DIR} already exists: choose an empty output directory")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out_dir / PARAMS_DIR, params)
        checkpointer.wait_until_finished()
    _write_json_atomic(out_dir / CONFIG_FILE, {"model": kind, "config": config, **extra})
    return out_dir


def load_converted(out_dir: str | Path) -> tuple[str, dict[str, Any], Any]:
    """Read a directory written by `save_converted`: (kind, config dict, params)."""
    import orbax.checkpoint as ocp

    out_dir = Path(out_dir).absolute()
    config_path = out_dir / CONFIG_FILE
    if not config_path.is_file() or not (out_dir / PARAMS_DIR).is_dir():
        raise CheckpointError(f"{out_dir} is not a converted seisfuse directory "
                              f"(needs {CONFIG_FILE} and {PARAMS_DIR}/)")
    meta = json.loads(config_path.read_text())
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(out_dir / PARAMS_DIR)
    return meta["model"], meta["config"], jax.tree.map(np.asarray, params)
