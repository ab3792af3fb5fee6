"""One SeisLM pretraining step (forward + backward + AdamW), JAX vs the PyTorch reference.

Same weights (the reference's, converted), same waveforms, masks and negatives, same machine,
alternating rounds; both sides in training mode (Gumbel straight-through quantizer). Prints the
steps/s of both and the ratio of the medians and of the fastest rounds.

Figures, dated, with their commands: experiments/RESULTS.md, "SeisLM pretraining step (2026-11-23)".

    python experiments/benchmarks/bench_seislm.py                        # seislm-base, batch 8 x 3001 samples
    python experiments/benchmarks/bench_seislm.py --preset tiny --rounds 2 --steps 1
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from seisfuse.convert.seislm import state_dict_to_params
from seisfuse.masking import pretraining_masks
from seisfuse.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForPreTraining
from seisfuse.testing.timing import alternate_rounds, median_rates
from seisfuse.testing.wav2vec2_torch import Wav2Vec2ForPreTraining as TorchModel
from seisfuse.testing.wav2vec2_torch import ref_config

LR, BETAS, EPS, TEMPERATURE = 5e-4, (0.9, 0.999), 1e-8, 2.0


def jax_stepper(cfg: Wav2Vec2Config, state_dict: dict, x: np.ndarray, mask: np.ndarray,
                negatives: np.ndarray):
    model = Wav2Vec2ForPreTraining(cfg)
    params, _ = state_dict_to_params({k: v.numpy() for k, v in state_dict.items()}, cfg)
    params = jax.tree.map(jnp.asarray, params)
    tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=0.0)
    batch = tuple(map(jnp.asarray, (x, mask, negatives)))

    def loss_fn(p, key):
        out = model.apply({"params": p}, batch[0], mask_time_indices=batch[1],
                          sampled_negative_indices=batch[2], gumbel_temperature=TEMPERATURE,
                          train=True, rngs={"gumbel": key})
        return out["loss"] / jnp.sum(batch[1])

    def step(state, key):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    step = jax.jit(step, donate_argnums=0)
    holder = {"state": (params, tx.init(params)), "key": jax.random.key(0)}

    def run() -> float:
        holder["key"], key = jax.random.split(holder["key"])
        holder["state"], loss = step(holder["state"], key)
        return float(loss)

    return run


def torch_stepper(model: TorchModel, x: np.ndarray, mask: np.ndarray, negatives: np.ndarray):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    model.quantizer.temperature = TEMPERATURE
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0)
    inputs = tuple(t.to(device) for t in (torch.from_numpy(x).transpose(1, 2).contiguous(),
                                          torch.from_numpy(mask), torch.from_numpy(negatives)))

    def run() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model(*inputs)["loss"] / inputs[1].sum()
        loss.backward()
        opt.step()
        return loss.item()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seislm-base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=3001)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="steps per timed round")
    args = parser.parse_args()

    cfg = Wav2Vec2Config.preset(args.preset)
    torch.manual_seed(0)
    reference = TorchModel(ref_config(cfg))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.samples, cfg.input_channels)).astype(np.float32)
    mask, negatives = pretraining_masks(
        rng, args.batch, cfg.frames(args.samples), mask_prob=cfg.mask_time_prob,
        mask_length=cfg.mask_time_length, min_masks=cfg.mask_time_min_masks,
        num_negatives=cfg.num_negatives)
    state_dict = {k: v.clone() for k, v in reference.state_dict().items()}
    runners = {"jax": jax_stepper(cfg, state_dict, x, mask, negatives),
               "torch": torch_stepper(reference, x, mask, negatives)}
    times = alternate_rounds(runners, args.rounds, args.steps)
    rate = median_rates(times)
    print(f"device: jax {jax.devices()[0].device_kind} | torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"SeisLM {args.preset} pretraining step, batch {args.batch} x {args.samples} samples, "
          f"float32, {args.rounds} alternating rounds x {args.steps} steps (median)")
    for name in runners:
        seconds = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"  {name:6s} {rate[name]:.3f} steps/s  ({args.batch * rate[name]:.2f} waveforms/s; "
              f"s/step per round: {seconds})")
    print(f"  ratio jax/torch = {rate['jax'] / rate['torch']:.2f}x (medians); "
          f"{min(times['torch']) / min(times['jax']):.2f}x (fastest rounds, least disturbed by other load)")


if __name__ == "__main__":
    main()
