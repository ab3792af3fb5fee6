"""Training metrics to the console (a progress line), wandb and TensorBoard; process 0 only.

MFU = analytic training FLOPs per step / step time / (peak FLOP/s per device x devices), reported
when the device's peak is known for the compute dtype.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from etils import epath

# Dense peak FLOP/s per device by device_kind substring: (bfloat16, float32).
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 67e12),
    ("H100", 989e12, 67e12),
    ("A100", 312e12, 19.5e12),
    ("TPU v6", 918e12, 918e12 / 2),
    ("TPU v5p", 459e12, 459e12 / 2),
    ("TPU v5", 197e12, 197e12 / 2),
    ("TPU v4", 275e12, 275e12 / 2),
)


def peak_flops(device: jax.Device, dtype: str) -> float | None:
    for kind, bf16, fp32 in PEAK_FLOPS:
        if kind.lower() in device.device_kind.lower():
            return bf16 if dtype == "bfloat16" else fp32
    return None


class MetricLogger:
    def __init__(self, workdir: Path | epath.Path, *, total_steps: int, global_batch: int,
                 flops_per_step: float, dtype: str, wandb_config: Mapping[str, Any], tensorboard: bool,
                 run_config: Mapping[str, Any]):
        self.enabled = jax.process_index() == 0
        self.total_steps, self.global_batch, self.flops_per_step = total_steps, global_batch, flops_per_step
        peak = peak_flops(jax.devices()[0], dtype)
        self.peak_total = peak * jax.device_count() if peak else None
        self.wandb = self.tb = None
        self.last: tuple[int, float] | None = None
        if not self.enabled:
            return
        if wandb_config.get("mode", "offline") != "disabled":
            import wandb

            self.wandb = wandb.init(project=wandb_config.get("project", "seisfuse"),
                                    mode=wandb_config.get("mode", "offline"), dir=str(workdir),
                                    config=dict(run_config), resume="allow")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def start(self, step: int) -> None:
        self.last = (step, time.perf_counter())

    def log(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """Add throughput figures since the previous call and write everything out."""
        now = time.perf_counter()
        values = dict(metrics)
        if self.last is not None and step > self.last[0]:
            seconds = (now - self.last[1]) / (step - self.last[0])
            values["steps_per_s"] = 1.0 / seconds
            values["samples_per_s"] = self.global_batch / seconds
            if self.peak_total:
                values["mfu"] = self.flops_per_step / seconds / self.peak_total
        self.last = (step, now)
        if self.enabled:
            self._console(step, values)
            if self.wandb is not None:
                self.wandb.log(values, step=step)
            if self.tb is not None:
                for key, value in values.items():
                    self.tb.add_scalar(key, value, step)
        return values

    def _console(self, step: int, values: Mapping[str, float]) -> None:
        width = 24
        filled = int(width * step / max(self.total_steps, 1))
        parts = [f"step {step}/{self.total_steps} [{'#' * filled}{'.' * (width - filled)}]",
                 f"loss {values.get('loss', float('nan')):.4f}"]
        if "steps_per_s" in values:
            parts += [f"{values['steps_per_s']:.2f} steps/s", f"{values['samples_per_s']:.1f} samples/s"]
        if "mfu" in values:
            parts.append(f"MFU {100 * values['mfu']:.1f}%")
        print(" | ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()
