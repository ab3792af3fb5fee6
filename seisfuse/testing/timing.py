"""Side-by-side timing for the ratio benchmarks: warm every runner up, then alternate timed rounds
so that all runners see the same machine load."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def alternate_rounds(runners: dict[str, Callable[[], object]], rounds: int, steps: int,
                     warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per step of each runner, one entry per round (rounds interleave the runners)."""
    for run in runners.values():  # compile / warm up
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def median_rates(times: dict[str, list[float]]) -> dict[str, float]:
    """Steps per second from the median round of each runner."""
    return {name: 1.0 / statistics.median(t) for name, t in times.items()}


def print_ratio(rate: dict[str, float], title: str, batch: int, unit: str) -> None:
    """The ratio benchmarks' report: devices, what was timed, steps/s of each side, jax/torch."""
    import jax
    import torch

    print(f"device: jax {jax.devices()[0].device_kind} | torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(title)
    for name, value in rate.items():
        print(f"  {name:6s} {value:.3f} steps/s  ({batch * value:.1f} {unit}/s)")
    print(f"  ratio jax/torch = {rate['jax'] / rate['torch']:.2f}x")
