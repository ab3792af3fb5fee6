"""One fine-tuning step (forward + backward + AdamW, BatchNorm statistics updated), JAX vs PyTorch.

The JAX side is the engine's own jitted step (`seisfuse.train.loop.Trainer` on the task that
`seisfuse finetune` builds); the PyTorch side is the plain-torch reference of the original head
with the same sizes, in training mode. Same inputs, same machine, alternating rounds; prints
steps/s of both and the ratio of the medians.

    python experiments/benchmarks/bench_finetune.py --model sfm-segment  # SFM-Base SETR-MLA, 224², batch 4
    python experiments/benchmarks/bench_finetune.py --model seislm-pick  # SeisLM-base picker, batch 8 x 3001
    python experiments/benchmarks/bench_finetune.py --model sfm-segment --preset tiny --rounds 2 --steps 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import torch

from seisfuse.testing.timing import alternate_rounds, median_rates, print_ratio
from seisfuse.train.config import load_config
from seisfuse.train.loop import RandomBatches, Trainer
from seisfuse.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[2]  # the repository

MODELS = {
    # name: (config, default batch, default preset)
    "sfm-segment": ("configs/sfm_finetune.py:salt", 4, "base"),
    "seislm-pick": ("configs/seislm_finetune.py:pick", 8, "seislm-base"),
}
LR, WD = 1e-4, 0.05


def bench_config(model: str, preset: str, batch: int):
    spec, _, _ = MODELS[model]
    c = load_config(str(ROOT / spec))
    c.model.preset = preset
    c.model.freeze = "none"
    c.batch_size, c.total_steps = batch, 1000
    c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.weight_decay = LR, 0, WD
    c.optimizer.layer_decay, c.optimizer.accumulate, c.optimizer.unfreeze_step = 1.0, 1, 0
    c.data.source = "random"
    return c


def jax_stepper(config):
    task = make_task(config)
    trainer = Trainer(task, config)
    holder = {"state": trainer.init_state(jax.random.key(0))}
    raw = next(RandomBatches(task, config.batch_size, seed=0))
    batch = trainer.global_batch(raw, 0)

    def run() -> float:
        holder["state"], metrics = trainer.step(holder["state"], batch)
        return float(metrics["loss"])

    return task, raw, run


def torch_stepper(model_name: str, task, raw: dict[str, np.ndarray]):
    torch.manual_seed(0)
    if model_name == "sfm-segment":
        from seisfuse.testing.sfm_finetune_torch import SegmentationRef

        model = SegmentationRef(task.cfg, task.num_classes, head_channels=task.model.head_channels).train()
        x = torch.from_numpy(raw["image"].transpose(0, 3, 1, 2).copy())
        y = torch.from_numpy(raw["label"].astype(np.int64))
        criterion = torch.nn.CrossEntropyLoss()

        def loss_fn() -> torch.Tensor:
            return criterion(model(x), y)
    else:
        from seisfuse.testing.seislm_finetune_torch import HeadConfig, build, vector_cross_entropy
        from seisfuse.testing.wav2vec2_torch import ref_config

        model = build(ref_config(task.cfg), HeadConfig(task="pick", head_dropout_rate=0.2)).train()
        x = torch.from_numpy(raw["waveform"].transpose(0, 2, 1).copy())
        y = torch.from_numpy(raw["labels"].transpose(0, 2, 1).copy())

        def loss_fn() -> torch.Tensor:
            return vector_cross_entropy(model(x), y)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    groups = [{"params": decay, "weight_decay": WD},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR)

    def run() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.item()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="sfm-segment")
    parser.add_argument("--preset", default=None, help="model preset (default: the model's base size)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed round")
    args = parser.parse_args()
    _, default_batch, default_preset = MODELS[args.model]
    batch, preset = args.batch or default_batch, args.preset or default_preset
    config = bench_config(args.model, preset, batch)
    task, raw, jax_run = jax_stepper(config)
    runners = {"jax": jax_run, "torch": torch_stepper(args.model, task, raw)}
    rate = median_rates(alternate_rounds(runners, args.rounds, args.steps, warmup=2))
    print_ratio(rate, f"{args.model} ({preset}) fine-tuning step, batch {batch}, float32, "
                f"{args.rounds} alternating rounds x {args.steps} steps (median)", batch, "examples")


if __name__ == "__main__":
    main()
