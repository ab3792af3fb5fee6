"""Subprocess side of the sharded-training tests: runs a few steps on a given mesh and saves results.

    python -m tests.train_worker OUT_DIR mae:1,8,1 seislm:2,2,2 [--restore-from DIR] [--save-to DIR]

Each run writes OUT_DIR/<task>_<mesh>.npz with the per-step losses and the final params. Settings
shared by every run (so that results are comparable) live in `settings`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np
from flax.traverse_util import flatten_dict
from jax.experimental import multihost_utils

from seisfuse.parallel import initialize_distributed
from seisfuse.train.checkpoint import Checkpointer
from seisfuse.train.config import load_config
from seisfuse.train.loop import RandomBatches, Trainer
from seisfuse.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


def settings(task: str, mesh: tuple[int, int, int], accumulate: int = 1):
    # Adam divides each gradient by its own magnitude: on gradients that are exactly zero in exact
    # arithmetic (e.g. attention key biases) rounding noise would move params by ~lr in any
    # direction. A large eps keeps those steps tiny while real gradients still move the params.
    config = load_config(str(ROOT / f"configs/{task}_pretrain.py") + ":tiny",
                         ["optimizer.eps=1e-3", "optimizer.warmup_steps=1", f"total_steps={STEPS}",
                          f"optimizer.accumulate={accumulate}", "wandb.mode=disabled", "tensorboard=False"])
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    return config


def run(task_name: str, mesh: tuple[int, int, int], accumulate: int = 1):
    config = settings(task_name, mesh, accumulate)
    task = make_task(config)
    trainer = Trainer(task, config)
    data = RandomBatches(task, trainer.local_batch, config.seed, trainer.first_example)
    state = trainer.init_state(jax.random.key(config.seed))
    losses = []
    for step in range(STEPS):
        state, metrics = trainer.step(state, trainer.global_batch(next(data), step))
        losses.append(float(metrics["loss"]))
    return trainer, state, np.array(losses)


def gathered_params(state) -> dict[str, np.ndarray]:
    params = multihost_utils.process_allgather(state.params, tiled=True)
    return {k: np.asarray(v) for k, v in flatten_dict(params, sep="/").items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", nargs="*", help="task:data,fsdp,tensor[:accumulate]")
    parser.add_argument("--save-to", type=Path, help="save the last run's state as a checkpoint here")
    parser.add_argument("--restore-to-mesh", help="restore --save-to's checkpoint onto this mesh")
    parser.add_argument("--memory", action="store_true", help="print per-device state bytes (base presets)")
    args = parser.parse_args()
    initialize_distributed()
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.runs:
        task, mesh_text, *acc = spec.split(":")
        mesh = tuple(int(v) for v in mesh_text.split(","))
        trainer, state, losses = run(task, mesh, int(acc[0]) if acc else 1)
        if jax.process_index() == 0:
            np.savez(args.out / f"{spec.replace(':', '_').replace(',', '')}.npz", losses=losses,
                     **gathered_params(state))
        else:
            gathered_params(state)
    if args.save_to:
        checkpointer = Checkpointer(args.save_to)
        checkpointer.save(STEPS, state, {"count": STEPS})
        checkpointer.close()
    if args.restore_to_mesh:
        task_name = args.runs[-1].split(":")[0]
        mesh = tuple(int(v) for v in args.restore_to_mesh.split(","))
        trainer = Trainer(make_task(settings(task_name, mesh)), settings(task_name, mesh))
        checkpointer = Checkpointer(args.save_to)
        state, data_state = checkpointer.restore(checkpointer.latest_step(), trainer.abstract_state)
        checkpointer.close()
        assert data_state == {"count": STEPS}
        if jax.process_index() == 0:
            np.savez(args.out / "restored.npz", **gathered_params(state))
    if args.memory:
        print(json.dumps(memory_report()))
    sys.stdout.flush()


def memory_report() -> dict[str, dict[str, float]]:
    """Per-device argument bytes of the compiled step (state + batch) for base presets, fsdp=8 vs
    replicated (data=8); the batch is split the same way in both, so it is subtracted."""
    report = {}
    for task_name, preset in (("mae", "base"), ("seislm", "seislm-base")):
        sizes = {}
        for name, mesh in (("fsdp", (1, 8, 1)), ("replicated", (8, 1, 1))):
            config = settings(task_name, mesh)
            config.model.preset, config.model.dtype = preset, "float32"
            task = make_task(config)
            trainer = Trainer(task, config)
            batch = trainer.global_batch(next(RandomBatches(task, trainer.local_batch, 0)), 0)
            compiled = trainer.step.lower(trainer.abstract_state, batch).compile()
            memory = compiled.memory_analysis()
            batch_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(batch)) / 8
            sizes[name] = memory.argument_size_in_bytes - batch_bytes
        report[task_name] = sizes
    return report


if __name__ == "__main__":
    main()
