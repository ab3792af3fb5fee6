"""Data-path benchmark: synthetic pairs/s per core, grain pipeline batches/s with N workers, and
JAX Mel spectrogram vs librosa on the same batch.

Figures, dated, with their commands: experiments/RESULTS.md, "Data pipeline (2026-11-23)".

    python experiments/benchmarks/bench_data.py                 # writes experiments/results/bench_data.json
    python experiments/benchmarks/bench_data.py --workers 0 1 2 --pairs 200 --batches 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def bench_generator(n: int) -> dict:
    from seisfuse.data.synthetic import generate_pair

    generate_pair(0, 0)  # warm caches
    start = time.perf_counter()
    for i in range(n):
        generate_pair(1, i)
    seconds = time.perf_counter() - start
    return {"pairs": n, "seconds": seconds, "pairs_per_s_per_core": n / seconds}


def bench_pipeline(workers: list[int], batches: int, batch_size: int) -> dict:
    from seisfuse.data.pipeline import SyntheticSource, make_dataset

    out = {}
    for n in workers:
        ds = make_dataset(
            SyntheticSource(100_000, seed=2),
            task="paired",
            batch_size=batch_size,
            seed=0,
            augment=True,
            num_workers=n,
            prefetch=2,
        )
        it = iter(ds)
        next(it)  # start-up (worker processes) not counted
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - start
        out[f"workers={n}"] = {
            "batches_per_s": batches / seconds,
            "pairs_per_s": batches * batch_size / seconds,
        }
        del it
    return out


def bench_mel(batch: int, repeats: int) -> dict:
    import jax
    import librosa

    from seisfuse.data.spectrogram import SFM_MEL, melspectrogram

    kw = SFM_MEL.mel_kwargs()
    y = np.random.default_rng(0).standard_normal((batch, 3, 3001)).astype(np.float32)
    out = {"shape": list(y.shape), "preset": kw}
    for dtype in ("float64", "float32"):
        fn = jax.jit(lambda a, d=dtype: melspectrogram(a, fft_dtype=d, **kw))
        fn(y).block_until_ready()
        start = time.perf_counter()
        for _ in range(repeats):
            fn(y).block_until_ready()
        out[f"jax_{dtype}_fft_s"] = (time.perf_counter() - start) / repeats
    librosa.feature.melspectrogram(y=y, **kw)
    start = time.perf_counter()
    for _ in range(repeats):
        librosa.feature.melspectrogram(y=y, **kw)
    out["librosa_s"] = (time.perf_counter() - start) / repeats
    out["speedup_vs_librosa_float64_fft"] = out["librosa_s"] / out["jax_float64_fft_s"]
    out["speedup_vs_librosa_float32_fft"] = out["librosa_s"] / out["jax_float32_fft_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mel-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_data.json")
    )
    args = parser.parse_args()

    import jax

    results = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "jax_backend": jax.default_backend(),
        },
        "generator": bench_generator(args.pairs),
        "pipeline_paired": bench_pipeline(args.workers, args.batches, args.batch_size),
        "mel": bench_mel(args.mel_batch, args.repeats),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
