"""Training checkpoints: orbax CheckpointManager with the data-iterator state and a fingerprint of
every array saved beside the state.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save leaves nothing that `latest_step` would pick up. Saves are asynchronous: training goes on
while the arrays are written, and `close()` waits for the last one.

Orbax (tensorstore's OCDBT store) refuses truncated or garbled array files by itself; what it
cannot notice is an intact array file that is not the step's own (a `state/` copied over from
another step, a half-finished rsync). So each save also stores, per array, a 32-bit fingerprint
computed where the array lives (a sum of its bit patterns times odd position weights, so any
single changed element changes it), and every restore recomputes and compares them and refuses
non-finite values. `restore_latest` falls back to the newest step that passes; `restore_params`
reads only the params, from the structure recorded in the checkpoint, without a Trainer.

An unwritable directory fails at once with `CheckpointWriteError` (`probe_writable`): orbax's
background thread would otherwise leave the process waiting minutes for a step that never starts.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from seisfuse.convert.torch_format import CheckpointError

FINGERPRINT_FORMAT = 1


class CheckpointWriteError(PermissionError):
    """The checkpoint directory cannot be created or written."""


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint step was skipped because it does not restore intact."""


def _path(directory: str | Path | epath.Path) -> epath.Path:
    path = epath.Path(directory)  # local or gs:// (shared by all hosts of a pod)
    return path if str(path).startswith("gs://") else path.absolute()


def probe_writable(directory: str | Path | epath.Path) -> None:
    """Create `directory` if needed and write and delete a small file in it, or raise
    CheckpointWriteError saying why: call it before training starts."""
    path = _path(directory)
    probe = path / f".seisfuse-write-probe-{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except Exception as err:  # PermissionError, read-only file system, a file in the way, gcs errors
        raise CheckpointWriteError(f"cannot write checkpoints to {path}: {type(err).__name__}: {err}. "
                                   "Choose a writable work directory.") from err


# --------------------------------------------------------------------------- fingerprints


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaf_paths(tree: Any) -> list[tuple[str, Any]]:
    """(path, leaf) with paths like 'params/dense/kernel' whether the tree is a TrainState
    dataclass or the nested dicts orbax's metadata describes."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in leaves]


def _bits(x: jax.Array) -> jax.Array:
    """The array's bit patterns as flat uint32 (wider types split, narrower widened)."""
    if x.dtype == jnp.bool_:
        return x.reshape(-1).astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)  # [..., 2]
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


@jax.jit
def _fingerprints(leaves: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    sums, bad = [], []
    for x in leaves:
        bits = _bits(x)
        weights = jax.lax.iota(jnp.uint32, bits.size) * jnp.uint32(0x9E3779B1) | jnp.uint32(1)
        sums.append(jnp.sum(bits * weights, dtype=jnp.uint32))
        floating = jnp.issubdtype(x.dtype, jnp.floating)
        bad.append(jnp.any(~jnp.isfinite(x)) if floating else jnp.zeros((), bool))
    return sums, bad


def fingerprint(tree: Any) -> dict[str, int]:
    """{path: 32-bit fingerprint} of every array leaf of `tree` (computed where the arrays live)."""
    paths = _leaf_paths(tree)
    sums, _ = jax.device_get(_fingerprints([jnp.asarray(leaf) for _, leaf in paths]))
    return {path: int(value) for (path, _), value in zip(paths, sums, strict=True)}


def verify(tree: Any, saved: dict[str, Any] | None, what: str) -> None:
    """Raise CheckpointError if a leaf of `tree` is non-finite or differs from its saved fingerprint."""
    paths = _leaf_paths(tree)
    sums, bad = jax.device_get(_fingerprints([jnp.asarray(leaf) for _, leaf in paths]))
    nonfinite = [path for (path, _), b in zip(paths, bad, strict=True) if b]
    if nonfinite:
        raise CheckpointError(f"{what}: non-finite values in {', '.join(nonfinite[:5])}")
    if saved is None:
        return  # saved before fingerprints were recorded
    if not isinstance(saved, dict) or saved.get("format") != FINGERPRINT_FORMAT \
            or not isinstance(saved.get("arrays"), dict):
        raise CheckpointError(f"{what}: its fingerprint record is unreadable")
    known = saved["arrays"]
    changed = [path for (path, _), value in zip(paths, sums, strict=True)
               if path not in known or known[path] != int(value)]
    if changed:
        raise CheckpointError(f"{what}: {len(changed)} arrays differ from what was saved "
                              f"({', '.join(changed[:5])}): the files are damaged")


# --------------------------------------------------------------------------- the manager


def _manager(path: epath.Path, keep: int | None, async_save: bool, read_only: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(path, options=options, item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "data": ocp.JsonCheckpointHandler(),
        "fingerprints": ocp.JsonCheckpointHandler(),
    })


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


class Checkpointer:
    """Save/restore TrainStates with their data-iterator state under one directory.

    `read_only=True` opens an existing directory without creating or probing it (evaluation).
    """

    def __init__(self, directory: str | Path | epath.Path, keep: int = 3, async_save: bool = True, *,
                 read_only: bool = False):
        self.directory = _path(directory)
        self.read_only = read_only
        if not read_only:
            probe_writable(self.directory)
        elif not self.directory.is_dir():
            raise FileNotFoundError(f"no checkpoint directory {self.directory}")
        self.manager = _manager(self.directory, keep, async_save, read_only)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
        if not str(self.directory).startswith("gs://"):
            probe_writable(self.directory)  # fail now, not in orbax's background thread
        prints = {"format": FINGERPRINT_FORMAT, "arrays": fingerprint(state)}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            fingerprints=ocp.args.JsonSave(prints)), force=True)

    def _has_fingerprints(self, step: int) -> bool:
        return (self.directory / str(step) / "fingerprints").exists()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restore onto the shardings carried by `abstract_state` (any mesh shape), verified
        against the saved fingerprints; CheckpointError if the step is damaged."""
        items = {"state": ocp.args.StandardRestore(abstract_state), "data": ocp.args.JsonRestore()}
        if self._has_fingerprints(step):
            items["fingerprints"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if not isinstance(restored.data, dict):
            raise CheckpointError(f"step {step}: the data-iterator state is not a JSON object")
        verify(restored.state, restored.get("fingerprints"), f"checkpoint step {step}")
        return restored.state, restored.data

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data_state) of the newest step that restores intact; None if there is no step.

        Damaged steps are skipped with a DamagedCheckpointWarning naming each and why, and renamed
        to STEP.damaged so that training can save those steps again; if none restores,
        CheckpointError lists them all (a config that does not match the run shows up here).
        """
        steps = self.all_steps()
        if not steps:
            return None
        restored, damaged = _newest_intact(
            steps, lambda step: (step, *self.restore(step, abstract_state)), self.directory)
        if damaged and not self.read_only:
            self._set_aside(damaged)
        return restored

    def _set_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            for step in steps:
                target, n = self.directory / f"{step}.damaged", 1
                while target.exists():
                    target, n = self.directory / f"{step}.damaged-{n}", n + 1
                (self.directory / str(step)).rename(target)
                warnings.warn(f"damaged checkpoint step {step} moved to {target}", DamagedCheckpointWarning,
                              stacklevel=3)
        ocp.multihost.sync_global_processes("seisfuse_set_aside_damaged_checkpoints")
        self.manager.reload()

    def restore_latest_params(self, items: tuple[str, ...] = ("params",)) -> tuple[int, Any] | None:
        """(step, {item: tree}) of the newest step whose `items` of the TrainState restore intact
        ('params', and e.g. 'model_state' for BatchNorm statistics); None if there is no step.

        Their structure, shapes and dtypes come from the checkpoint's own metadata; only those items
        are read (not the optimizer state), onto this process's first device, and verified like
        `restore`. Damaged steps are skipped with a DamagedCheckpointWarning (not moved). An item
        other than 'params' that an older checkpoint lacks comes back empty.
        """
        steps = self.all_steps()
        if not steps:
            return None
        restore = lambda step: (step, _restore_items(self, step, items))  # noqa: E731
        return _newest_intact(steps, restore, self.directory)[0]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _newest_intact(steps: list[int], restore: Any, directory: Any) -> tuple[Any, list[int]]:
    """restore(step) for the newest step where it succeeds, and the newer steps that failed."""
    failures: list[str] = []
    for n, step in enumerate(sorted(steps, reverse=True)):
        try:
            return restore(step), sorted(steps, reverse=True)[:n]
        except Exception as err:  # orbax/tensorstore/json raise many types for damaged files
            failures.append(f"step {step}: {_first_line(err)}")
            warnings.warn(f"checkpoint step {step} in {directory} is damaged and was skipped "
                          f"({_first_line(err)})", DamagedCheckpointWarning, stacklevel=3)
    raise CheckpointError(f"no checkpoint in {directory} restores intact:\n  " + "\n  ".join(failures))


def restore_params(directory: str | Path | epath.Path) -> Any:
    """The params of the newest intact checkpoint under `directory`, without building a Trainer
    (see `Checkpointer.restore_latest_params`). FileNotFoundError if there is no checkpoint."""
    return restore_items(directory, ("params",))[0]["params"]


def restore_items(directory: str | Path | epath.Path, items: tuple[str, ...]) -> tuple[dict[str, Any], int]:
    """({item: tree}, step) of the newest intact checkpoint under `directory` (e.g. params and
    model_state for inference), without building a Trainer. FileNotFoundError if there is none."""
    checkpointer = Checkpointer(directory, read_only=True)
    try:
        restored = checkpointer.restore_latest_params(items)
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"{checkpointer.directory} holds no finished checkpoint")
    step, trees = restored
    return trees, step


def _restore_items(checkpointer: Checkpointer, step: int, items: tuple[str, ...]) -> dict[str, Any]:
    metadata = checkpointer.manager.item_metadata(step)["state"]
    tree = getattr(metadata, "tree", metadata)
    if not isinstance(tree, dict) or not isinstance(tree.get("params"), dict):
        raise CheckpointError(f"step {step} is not a training checkpoint (no params in its metadata)")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    present = [item for item in items if isinstance(tree.get(item), dict) and jax.tree.leaves(tree[item])]
    abstract = {item: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                   tree[item]) for item in present}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract)
    with ocp.PyTreeCheckpointer() as reader:
        restored = reader.restore(checkpointer.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
            item=abstract, restore_args=restore_args, partial_restore=True))
    saved = None
    if checkpointer._has_fingerprints(step):
        saved = checkpointer.manager.restore(step, args=ocp.args.Composite(
            fingerprints=ocp.args.JsonRestore())).fingerprints
    if isinstance(saved, dict) and isinstance(saved.get("arrays"), dict):  # only these items were read
        prefixes = tuple(f"{item}/" for item in present)
        saved = {**saved, "arrays": {k: v for k, v in saved["arrays"].items() if k.startswith(prefixes)}}
    verify(restored, saved, f"checkpoint step {step}")
    return {item: restored.get(item, {}) for item in items}


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that tell orbax where each restored array goes."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
