"""Subprocess side of the sharded contrastive-loss tests (run with N fake CPU devices).

    python -m tests.contrastive_worker OUT.npz

Writes, for several meshes over all devices (or none with one device), the CLIP and SigLIP losses
and their gradients (embeddings, temperature, bias), the loss and parameter gradients of an
align task on a sharded batch, and whether any compiled program holds a [B, B] array.
"""

from __future__ import annotations

import re
import sys

import flax.linen as nn
import jax
import numpy as np
from flax.traverse_util import flatten_dict
from jax.sharding import NamedSharding, PartitionSpec

from seisfuse import losses
from seisfuse.parallel import BATCH_AXES, make_mesh
from seisfuse.train.config import load_config
from seisfuse.train.tasks import make_task

BATCH, DIM, TASK_BATCH = 32, 16, 8
MESHES = {1: [(1, 1, 1)], 8: [(8, 1, 1), (2, 4, 1), (2, 2, 2)]}


def embeddings() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((BATCH, DIM)).astype(np.float32) for _ in range(2))
    b = 0.6 * a + 0.4 * b  # correlated pairs: positives matter
    return tuple(x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))


def full_square(compiled_text: str) -> bool:
    """True if the program holds any array with two axes of size BATCH (a full B x B block)."""
    return re.search(rf"\[(\d+,)*{BATCH},{BATCH}(,\d+)*\]", compiled_text) is not None


def loss_results(mesh_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    mesh = make_mesh(*mesh_shape)
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    a, b = (jax.device_put(x, sharding) for x in embeddings())
    scale, bias = np.float32(np.log(10.0)), np.float32(-10.0)
    cases = {"clip": (lambda a, b, s: losses.clip_loss(a, b, s, mesh=mesh), (a, b, scale)),
             "siglip": (lambda a, b, s, t: losses.siglip_loss(a, b, s, t, mesh=mesh), (a, b, scale, bias))}
    out = {}
    for name, (fn, args) in cases.items():
        step = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))
        value, grads = step(*args)
        tag = f"{name}_{''.join(map(str, mesh_shape))}"
        out[f"{tag}/loss"] = np.asarray(value)
        for key, g in zip(("a", "b", "scale", "bias"), grads, strict=False):
            out[f"{tag}/grad_{key}"] = np.asarray(g)
        out[f"{tag}/full_square"] = np.asarray(full_square(step.lower(*args).compile().as_text()))
    return out


def task_results(mesh_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Loss and gradients of the tiny align task (SigLIP) on one random batch, batch sharded."""
    config = load_config("configs/align.py:tiny", [f"batch_size={TASK_BATCH}"])
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
    task = make_task(config)
    mesh = task.mesh
    rng = np.random.default_rng(1)
    examples = [task.random_example(rng) for _ in range(TASK_BATCH)]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    batch = {k: jax.device_put(v, NamedSharding(mesh, PartitionSpec(BATCH_AXES))) for k, v in batch.items()}
    params = jax.jit(lambda key: nn.unbox(task.init_params(key)))(jax.random.key(0))
    grad_fn = jax.jit(jax.value_and_grad(lambda p, x: task.loss(p, x, jax.random.key(0), 0)[0]))
    value, grads = grad_fn(params, batch)
    tag = f"task_{''.join(map(str, mesh_shape))}"
    out = {f"{tag}/loss": np.asarray(value)}
    out.update({f"{tag}/grad/{k}": np.asarray(v) for k, v in flatten_dict(grads, sep="/").items()})
    return out


def main() -> None:
    jax.config.update("jax_default_matmul_precision", "highest")
    results = {}
    for shape in MESHES[jax.device_count()]:
        results.update(loss_results(shape))
    results.update(task_results(MESHES[jax.device_count()][-1]))
    np.savez(sys.argv[1], **results)


if __name__ == "__main__":
    main()
