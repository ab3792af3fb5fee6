"""Training throughput of the sharded engine: steps/s, samples/s and (on a known accelerator) MFU.

Runs the real jitted step (sharded over all local devices, donated state, AdamW) on random batches
of the right shapes, for each task and preset asked for.

Figures, dated, with their commands: experiments/RESULTS.md, "Training engine (2026-11-23)".

    python experiments/benchmarks/bench_train.py                                       # tiny, CPU
    python experiments/benchmarks/bench_train.py --runs mae:base:8 seislm:seislm-base:8
    python experiments/benchmarks/bench_train.py --runs mae:large:64 --dtype bfloat16  # SFM-Large, one H100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

from seisfuse.train.config import load_config
from seisfuse.train.logging import peak_flops
from seisfuse.train.loop import RandomBatches, Trainer
from seisfuse.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[2]  # the repository

CONFIGS = {"mae": "configs/mae_pretrain.py:tiny", "seislm": "configs/seislm_pretrain.py:tiny"}


def measure(task_name: str, preset: str, batch: int, dtype: str, steps: int) -> dict[str, float]:
    config = load_config(str(ROOT / CONFIGS[task_name]), [f"batch_size={batch}", "data.source='random'",
                                                           f"total_steps={steps + 10}"])
    config.model.preset, config.model.dtype = preset, dtype
    task = make_task(config)
    trainer = Trainer(task, config)
    data = RandomBatches(task, trainer.local_batch, config.seed, trainer.first_example)
    batches = [trainer.global_batch(next(data), i) for i in range(2)]
    state = trainer.init_state(jax.random.key(0))
    for i in range(2):  # compile and warm up
        state, metrics = trainer.step(state, batches[i % 2])
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = trainer.step(state, batches[i % 2])
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    result = {"steps_per_s": 1 / seconds, "samples_per_s": batch / seconds}
    peak = peak_flops(jax.devices()[0], dtype)
    if peak:
        result["mfu"] = task.flops_per_example() * batch / seconds / (peak * jax.device_count())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["mae:tiny:8", "seislm:tiny:8"],
                        help="task:preset:global_batch")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}, dtype {args.dtype}")
    for spec in args.runs:
        task_name, preset, batch = spec.split(":")
        r = measure(task_name, preset, int(batch), args.dtype, args.steps)
        mfu = f" | MFU {100 * r['mfu']:.1f}%" if "mfu" in r else " | MFU n/a (peak unknown)"
        print(f"{task_name:7s} {preset:12s} batch {batch:>4s}: {r['steps_per_s']:.3f} steps/s | "
              f"{r['samples_per_s']:.1f} samples/s{mfu}")


if __name__ == "__main__":
    main()
