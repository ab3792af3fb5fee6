"""What every converter shares: the key-table type and its drivers (load, export, expected shapes),
float32 casting, and the converted-directory format.

A converted directory holds `config.json` ({"model": kind, "config": {...}, ...}) and an orbax
checkpoint of the params under `params/`; both are written atomically, so an interrupted conversion
never leaves a directory that loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from seisfuse.convert.torch_format import CheckpointError

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


# ----------------------------------------------------------------- key tables
#
# A model's key table lists its torch modules in the original state_dict's order, each with the
# Flax path of its variables and how the tensors change layout between the two. The same table
# drives loading (torch -> Flax), export (Flax -> torch) and the expected-shape check.

Array = np.ndarray
Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class KeyEntry:
    """One torch module (or, for kind "raw", one tensor) <-> its place in the Flax variables.

    torch: the module's key prefix ("blocks.0.attn.qkv"), or the tensor's whole key for "raw".
    path: the Flax module path holding its leaves ("raw": the leaf's own path).
    kind: a key of KINDS. shape: the torch weight's shape ((C,) for norms and BatchNorm; the
    weight_v shape [out, in/groups, k] for "weight_norm"). bias: whether the module has one.
    heads: the attention head count that "qkv", "attn_in" and "attn_out" split off or merge.
    """

    torch: str
    path: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    bias: bool = True
    heads: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown key-table kind {self.kind!r}; choose from {sorted(KINDS)}")


KeyTable = list[KeyEntry]


@dataclasses.dataclass(frozen=True)
class Move:
    """One torch tensor <-> the Flax leaves it becomes: one, or three for a fused qkv.

    leaves are (collection, *path). A counter (BatchNorm's num_batches_tracked) has none: it is
    checked to be an integer when present, never loaded, and written as 0 (momentum 0.1 never
    reads it).
    """

    key: str
    shape: tuple[int, ...]
    leaves: tuple[tuple[str, ...], ...]
    to_flax: Callable[[Array], tuple[Array, ...]]
    to_torch: Callable[..., Array]
    counter: bool = False


def _same(array: Array) -> Array:
    return array


def _conv1d(array: Array) -> Array:
    """Conv1d weight [O, I, k] <-> kernel [k, I, O] (its own inverse)."""
    return array.transpose(2, 1, 0)


def _conv2d(array: Array) -> Array:
    """Conv2d weight [O, I, kh, kw] -> kernel [kh, kw, I, O]."""
    return array.transpose(2, 3, 1, 0)


def _conv2d_back(array: Array) -> Array:
    return array.transpose(3, 2, 0, 1)


def _move(entry: KeyEntry, suffix: str, leaf: tuple[str, ...], shape: tuple[int, ...],
          to_flax: Callable[[Array], Array] = _same, to_torch: Callable[[Array], Array] = _same,
          collection: str = "params") -> Move:
    key = f"{entry.torch}.{suffix}" if suffix else entry.torch
    return Move(key, shape, ((collection, *entry.path, *leaf),), lambda a: (to_flax(a),), to_torch)


def _affine(entry: KeyEntry, weight_leaf: str, to_flax: Callable[[Array], Array],
            to_torch: Callable[[Array], Array], bias_to_flax: Callable[[Array], Array] = _same,
            bias_to_torch: Callable[[Array], Array] = _same) -> list[Move]:
    """weight -> `weight_leaf`, bias -> bias (when the module has one)."""
    moves = [_move(entry, "weight", (weight_leaf,), entry.shape, to_flax, to_torch)]
    if entry.bias:
        moves.append(_move(entry, "bias", ("bias",), entry.shape[:1], bias_to_flax, bias_to_torch))
    return moves


def _linear(entry: KeyEntry) -> list[Move]:
    """Linear weight [out, in] <-> Dense kernel [in, out]."""
    return _affine(entry, "kernel", np.transpose, np.transpose)


def _attn_in(entry: KeyEntry) -> list[Move]:
    """A q/k/v projection [out, in] <-> kernel [in, heads, out/heads], bias [heads, out/heads]."""
    out, inp = entry.shape
    heads = entry.heads
    return _affine(entry, "kernel", lambda w: w.T.reshape(inp, heads, -1), lambda k: k.reshape(inp, out).T,
                   lambda b: b.reshape(heads, -1), lambda b: b.reshape(-1))


def _attn_out(entry: KeyEntry) -> list[Move]:
    """The attention output projection [out, in] <-> kernel [heads, in/heads, out]."""
    out, inp = entry.shape
    heads = entry.heads
    return _affine(entry, "kernel", lambda w: w.T.reshape(heads, -1, out), lambda k: k.reshape(inp, out).T)


def _qkv(entry: KeyEntry) -> list[Move]:
    """timm's fused qkv Linear [3w, w] <-> three q/k/v projections (query, key, value)."""
    three, width = entry.shape
    heads = entry.heads
    names = ("query", "key", "value")

    def leaves(leaf: str) -> tuple[tuple[str, ...], ...]:
        return tuple(("params", *entry.path, name, leaf) for name in names)

    return [Move(f"{entry.torch}.weight", entry.shape, leaves("kernel"),
                 lambda w: tuple(part.T.reshape(width, heads, -1) for part in np.split(w, 3)),
                 lambda *kernels: np.concatenate([k.reshape(width, width).T for k in kernels])),
            Move(f"{entry.torch}.bias", (three,), leaves("bias"),
                 lambda b: tuple(part.reshape(heads, -1) for part in np.split(b, 3)),
                 lambda *biases: np.concatenate([b.reshape(-1) for b in biases]))]


def _weight_norm(entry: KeyEntry) -> list[Move]:
    """A weight-normed Conv1d (torch parametrizations: original0 = g [1, 1, k], original1 = v)
    <-> bias, weight_g [k] and weight_v [k, in/groups, out]."""
    out, _, kernel = entry.shape
    return [_move(entry, "bias", ("bias",), (out,)),
            _move(entry, "parametrizations.weight.original0", ("weight_g",), (1, 1, kernel),
                  lambda g: g.reshape(-1), lambda g: g.reshape(1, 1, -1)),
            _move(entry, "parametrizations.weight.original1", ("weight_v",), entry.shape, _conv1d, _conv1d)]


def _batch_norm(entry: KeyEntry) -> list[Move]:
    """BatchNorm weight/bias <-> params scale/bias; running_mean/var <-> batch_stats mean/var."""
    moves = [_move(entry, name, (leaf,), entry.shape, collection=collection)
             for name, leaf, collection in (("weight", "scale", "params"), ("bias", "bias", "params"),
                                            ("running_mean", "mean", "batch_stats"),
                                            ("running_var", "var", "batch_stats"))]
    counter = Move(f"{entry.torch}.num_batches_tracked", (), (), lambda _: (),
                   lambda: np.zeros((), np.int64), counter=True)
    return [*moves, counter]


KINDS: dict[str, Callable[[KeyEntry], list[Move]]] = {
    "raw": lambda e: [_move(e, "", (), e.shape)],
    "linear": _linear,
    "attn_in": _attn_in,
    "attn_out": _attn_out,
    "qkv": _qkv,
    "conv1d": lambda e: _affine(e, "kernel", _conv1d, _conv1d),
    "conv2d": lambda e: _affine(e, "kernel", _conv2d, _conv2d_back),
    "norm": lambda e: _affine(e, "scale", _same, _same),
    "weight_norm": _weight_norm,
    "bn": _batch_norm,
}


def table_moves(table: KeyTable) -> list[Move]:
    """Every tensor of the table, in the original state_dict's order."""
    return [move for entry in table for move in KINDS[entry.kind](entry)]


def table_shapes(table: KeyTable) -> dict[str, tuple[int, ...]]:
    """Every key the original model's state_dict must hold (counters aside), with its shape."""
    return {m.key: m.shape for m in table_moves(table) if not m.counter}


def check_keys(state: Mapping[str, Any], table: KeyTable, what: str,
               owned: tuple[str, ...] = ("",)) -> list[str]:
    """Raise CheckpointError listing every missing, unexpected and mis-shaped key; return the rest.

    A key the table lacks is unexpected when it starts with one of `owned` (default: any key);
    others (another model's head, say) come back sorted, for the caller to report.
    """
    moves = {m.key: m for m in table_moves(table)}
    missing = [k for k, m in moves.items() if not m.counter and k not in state]
    unknown = [k for k in state if k not in moves]
    unexpected = [k for k in unknown if k.startswith(owned)]
    wrong = [f"{k}: file {tuple(np.shape(state[k]))}, expected {m.shape}" for k, m in moves.items()
             if k in state and tuple(np.shape(state[k])) != m.shape]
    wrong += [f"{k}: dtype {np.asarray(state[k]).dtype}, expected an integer counter"
              for k, m in moves.items()
              if m.counter and k in state and not np.issubdtype(np.asarray(state[k]).dtype, np.integer)]
    if missing or unexpected or wrong:
        lines = [f"{what}: the checkpoint does not match the model its tensors and config describe."]
        for label, items, sep in (("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "),
                                  ("wrong shapes or types", wrong, "; ")):
            if items:
                lines.append(f"{label} ({len(items)}): " + sep.join(items))
        raise CheckpointError("\n".join(lines))
    return sorted(k for k in unknown if not k.startswith(owned))


def load_table(state: Mapping[str, Any], table: KeyTable, what: str,
               owned: tuple[str, ...] = ("",)) -> tuple[dict[str, Params], list[str]]:
    """torch -> Flax: ({collection: nested float32 numpy arrays}, unused keys), keys checked first."""
    unused = check_keys(state, table, what, owned)
    variables: dict[str, Params] = {}
    for move in table_moves(table):
        if not move.counter:
            for leaf, value in zip(move.leaves, move.to_flax(float32(state[move.key])), strict=True):
                _set(variables, leaf, value)
    return variables, unused


def export_table(variables: Mapping[str, Any], table: KeyTable, what: str) -> dict[str, Array]:
    """Flax -> torch: the original state_dict (table order, float32, counters int64 0) for these
    variables ({collection: tree}). CheckpointError names tensors the variables lack or hold
    beyond the table, and wrong shapes."""
    flat = flatten_dict(nn.unbox(dict(variables)))
    moves = table_moves(table)
    missing = ["/".join(leaf) for m in moves for leaf in m.leaves if leaf not in flat]
    if missing:
        raise CheckpointError(f"{what}: the variables lack {len(missing)} tensors the original has: "
                              + ", ".join(missing))
    covered = {leaf for m in moves for leaf in m.leaves}
    extra = ["/".join(k) for k in flat if k not in covered]
    if extra:
        raise CheckpointError(f"{what}: the variables hold {len(extra)} tensors the original does not "
                              "have: " + ", ".join(extra))
    sd = {m.key: np.asarray(m.to_torch(*(np.asarray(flat[leaf], np.float32) for leaf in m.leaves)), order="C")
          for m in moves}
    check_keys(sd, table, f"{what} export")
    return sd


def nested(table: KeyTable, prefix: tuple[str, ...]) -> KeyTable:
    """The table of a model used as the submodule `prefix` of a larger one."""
    return [dataclasses.replace(entry, path=(*prefix, *entry.path)) for entry in table]


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def float32(array: np.ndarray) -> np.ndarray:
    """Checkpoints may hold fp16/bf16 weights; the Flax params are float32 master weights."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
        raise CheckpointError(f"expected a floating-point weight, got dtype {array.dtype}")
    return array.astype(np.float32)


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
