"""Device meshes, the one logical-axis-rules table, and host-local <-> global batches.

Mesh axes are `data`, `fsdp`, `tensor`. Models name their parameter axes logically (`embed`,
`heads`, `mlp`, ...); LOGICAL_AXIS_RULES maps those names to mesh axes, and nothing else in the
package mentions a mesh axis. FSDP shards every weight over `fsdp` along its width-like axis;
tensor parallelism splits heads and MLP units over `tensor`; batches shard over (`data`, `fsdp`).
When two axes of one weight map to the same mesh axis, Flax gives it to the first and leaves the
second unsharded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("decoder_embed", "fsdp"),
    ("conv_out", "fsdp"),
    ("codevectors", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("conv_in", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: list[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (or the given) devices; data=-1 takes what is left."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive (one may be -1), got data={data}, fsdp={fsdp}, "
                         f"tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into fsdp={fsdp} x tensor={tensor}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = "
                         f"{int(np.prod(sizes))} does not match the {len(devices)} devices")
    # Auto axes: jit propagates shardings from in/out_shardings (jax>=0.7 defaults to Explicit).
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def param_shardings(boxed_params: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree of LogicallyPartitioned params (e.g. from `jax.eval_shape(init)`)."""
    specs = nn.get_partition_spec(boxed_params)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def follow_params(tree: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a tree (e.g. optimizer state) whose leaves mirror params: a leaf whose trailing
    dict-key path and shape match a parameter gets that parameter's sharding; others are replicated."""
    by_path = {}
    for (path, param), sharding in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                       jax.tree.leaves(shardings), strict=True):
        by_path[_dict_keys(path)] = (param.shape, sharding)

    def pick(path: tuple, leaf: Any) -> NamedSharding:
        match = by_path.get(_dict_keys(path))
        return match[1] if match and match[0] == np.shape(leaf) else replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)


def _dict_keys(path: tuple) -> tuple[str, ...]:
    """The trailing run of dict keys of a key path (the parameter's own path inside a state)."""
    keys: list[str] = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.append(str(entry.key))
    return tuple(reversed(keys))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data and fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def local_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Examples each process feeds per step (its slice of the global batch)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % shards:
        raise ValueError(f"global batch {global_batch} is not divisible by data x fsdp = {shards}")
    if global_batch % jax.process_count():
        raise ValueError(f"global batch {global_batch} is not divisible by {jax.process_count()} processes")
    return global_batch // jax.process_count()


def process_batch_offset(global_batch: int, mesh: Mesh) -> int:
    """Global index of this process's first example under the batch sharding."""
    indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    return min(index[0].start or 0 for index in indices.values())


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's host-local slice into global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    out = {}
    for key, local in batch.items():
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Start multi-host JAX from flags or the environment; a no-op for a single process.

    With no arguments JAX reads its usual environments itself (TPU pod metadata, SLURM); the
    SEISFUSE_COORDINATOR / SEISFUSE_NUM_PROCESSES / SEISFUSE_PROCESS_ID variables also work.
    On CPU the cross-process collectives use gloo.
    """
    coordinator_address = coordinator_address or os.environ.get("SEISFUSE_COORDINATOR")
    if num_processes is None and "SEISFUSE_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["SEISFUSE_NUM_PROCESSES"])
    if process_id is None and "SEISFUSE_PROCESS_ID" in os.environ:
        process_id = int(os.environ["SEISFUSE_PROCESS_ID"])
    cluster = any(k in os.environ
                  for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))
    if coordinator_address is None and not cluster:
        return
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
