"""Alignment training-step throughput (pairs/s) of the engine's jitted step, and MFU on accelerators.

Builds the align task and Trainer from configs/align.py, feeds random image/waveform pairs and
times `Trainer.step` (forward, backward, AdamW, sharded over all devices) after a warm-up.
MFU = task.flops_per_example() x pairs/s / (peak FLOP/s x devices) where the peak is known
(seisfuse.train.logging.PEAK_FLOPS); on a CPU it is not reported.

Figures, dated, with their commands: experiments/RESULTS.md, "Alignment step (2026-11-23, 2026-12-01)".

    python experiments/benchmarks/bench_align.py               # tiny (batch 32), base (batch 8)
    python experiments/benchmarks/bench_align.py --variant base --batch 256 --steps 20   # an accelerator
    python experiments/benchmarks/bench_align.py 'model.image.pooling="mean"' --variant tiny  # a variant
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax

from seisfuse.train.config import load_config
from seisfuse.train.logging import peak_flops
from seisfuse.train.loop import RandomBatches, Trainer
from seisfuse.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[2]  # the repository

DEFAULT_BATCH = {"tiny": 32, "base": 8, "large": 4}


def bench(variant: str, batch: int, steps: int, rounds: int, dtype: str | None,
          extra: list[str] = ()) -> dict:
    overrides = [f"batch_size={batch}", "wandb.mode=disabled", "tensorboard=False", *extra]
    if dtype:
        overrides.append(f"model.dtype={dtype}")
    config = load_config(str(ROOT / f"configs/align.py:{variant}"), overrides)
    task = make_task(config)
    trainer = Trainer(task, config)
    state = trainer.init_state(jax.random.key(0))
    data = RandomBatches(task, trainer.local_batch, 0)
    batches = [trainer.global_batch(next(data), i) for i in range(2)]
    start = time.perf_counter()
    state, metrics = trainer.step(state, batches[0])
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(steps):
            state, metrics = trainer.step(state, batches[i % 2])
        jax.block_until_ready(metrics["loss"])
        times.append((time.perf_counter() - start) / steps)
    step_s = statistics.median(times)
    flops = task.flops_per_example() * batch
    peak = peak_flops(jax.devices()[0], config.model.dtype)
    return {"variant": variant, "batch": batch, "dtype": config.model.dtype, "loss": config.loss,
            "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            "step_s": step_s, "best_step_s": min(times), "pairs_per_s": batch / step_s,
            "compile_s": compile_s, "gflops_per_step": flops / 1e9,
            "mfu": flops / step_s / (peak * jax.device_count()) if peak else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*",
                        help="KEY=VALUE config overrides for every variant (before --variant)")
    parser.add_argument("--variant", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=None, help="global batch (default per variant)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default=None, help="override model.dtype (CPU: float32 is used)")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/results/bench_align.json")
    args = parser.parse_args()
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else None)
    results = []
    for variant in args.variant:
        batch = args.batch or DEFAULT_BATCH[variant.split("-")[0]]
        r = bench(variant, batch, args.steps, args.rounds, dtype, args.overrides)
        results.append(r)
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (peak unknown)"
        print(f"{variant:10s} batch {batch:4d} {r['dtype']:8s} on {r['devices']} x {r['device_kind']}: "
              f"{r['pairs_per_s']:8.1f} pairs/s ({1000 * r['step_s']:.0f} ms/step, best "
              f"{1000 * r['best_step_s']:.0f}), {r['gflops_per_step']:.1f} GFLOP/step, MFU {mfu}, "
              f"compile {r['compile_s']:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
