"""One SFM/MAE pretraining step (forward + backward + AdamW), JAX vs the PyTorch reference.

Same config, same inputs, same machine, alternating rounds; prints steps/s of both and the ratio.

Figures, dated, with their commands: experiments/RESULTS.md, "SFM / MAE pretraining step (2026-11-23)".

    python experiments/benchmarks/bench_mae.py                   # base, batch 8, float32
    python experiments/benchmarks/bench_mae.py --preset tiny --rounds 3
    python experiments/benchmarks/bench_mae.py --dtype bfloat16  # on an accelerator: bf16 compute both sides
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from seisfuse.models.mae import MAEConfig, MaskedAutoencoder
from seisfuse.testing.mae_torch import MaskedAutoencoderViT
from seisfuse.testing.timing import alternate_rounds, median_rates, print_ratio
from seisfuse.train.optim import mae_adamw

LR, WD, BETAS, MASK_RATIO = 1.5e-4, 0.05, (0.9, 0.95), 0.75


def jax_stepper(cfg: MAEConfig, images: np.ndarray, noise: np.ndarray):
    model = MaskedAutoencoder(cfg)
    x, z = jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(noise)
    params = nn.unbox(jax.jit(lambda k: model.init(k, x, noise=z))(jax.random.key(0))["params"])
    tx = mae_adamw(LR, params, weight_decay=WD, b1=BETAS[0], b2=BETAS[1])
    state = (params, tx.init(params))

    def loss_fn(p):
        return model.apply({"params": p}, x, noise=z, mask_ratio=MASK_RATIO)[0]

    @jax.jit
    def step(state):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (jax.tree.map(jnp.add, params, updates), opt_state), loss

    step = jax.jit(step.__wrapped__, donate_argnums=0)
    holder = {"state": state}

    def run() -> float:
        holder["state"], loss = step(holder["state"])
        return float(loss)

    return run


def torch_stepper(cfg: MAEConfig, images: np.ndarray, noise: np.ndarray, dtype: torch.dtype):
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MaskedAutoencoderViT(cfg).to(device).train()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in trainable if p.ndim <= 1 or n.endswith(".bias")]
    groups = [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
    x, z = torch.from_numpy(images).to(device), torch.from_numpy(noise).to(device)

    def run() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(x, MASK_RATIO, z)[0]
        loss.backward()
        opt.step()
        return loss.item()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    cfg = MAEConfig.preset(args.preset, dtype=args.dtype)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, cfg.in_chans, cfg.img_size, cfg.img_size)).astype(np.float32)
    noise = rng.random((args.batch, cfg.num_patches)).astype(np.float32)
    runners = {"jax": jax_stepper(cfg, images, noise),
               "torch": torch_stepper(cfg, images, noise, getattr(torch, args.dtype))}
    rate = median_rates(alternate_rounds(runners, args.rounds, args.steps, warmup=2))
    print_ratio(rate, f"MAE {args.preset} pretraining step, batch {args.batch}, {args.dtype}, "
                f"{args.rounds} alternating rounds x {args.steps} steps (median)", args.batch, "images")


if __name__ == "__main__":
    main()
