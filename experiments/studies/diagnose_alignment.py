"""Where does the demo's alignment stall? Each tower against an ideal partner, and the ceiling of
contrastive training itself, at 1200 steps (the previous demo's budget; --steps).

Date: 2026-12-01.
Question: is the demo's held-out R@10 of about 0.2 limited by contrastive training itself, by the
SFM-tiny image tower or by the SeisLM-tiny waveform tower?
Result (experiments/RESULTS.md, "2026-12-01: where it stalls" and "flatten pooling, first motion
up"): ideal features on both sides reach 0.74-0.79 (0.81 / 0.83 with 8192 pairs), so CLIP
training is not the limit; the image tower gets a third of the way (0.27-0.34); the waveform tower
stayed near chance (0.047 / 0.062) under the polarity flips. Three obstacles were found and
removed: mean pooling forgets when (`flatten`: the waveform tower reaches 0.727 / 0.727 against
the image oracle), polarity flips make the shared read-out non-linear (windows turned first
motion up: two linear oracles 0.797 / 0.785), and CLIP's initial temperature collapsed flattened
towers (`logit_scale_init = 1`). Rows measured before `first_motion_up` cannot be re-run as such.
Command: python experiments/studies/diagnose_alignment.py --pair IMAGE/WAVEFORM --steps 1200 [KEY=VALUE ...]

The demo's towers reached held-out R@10 ≈ 0.2 while a ridge map from the P window to the image's
station trace reaches 0.88 (probe_pairing.py). This script swaps one or both towers for an
"oracle": a linear map from hand-made features that hold what the pair shares,

- image oracle: the station's trace (mean of the 16 image columns around the station);
- waveform oracle (--waveform-oracle): the autocorrelation of Z over 1.6 s from 0.1 s before P,
  lags 0-2 s (the free-surface reverberations; blind to polarity), or those 160 Z samples
  themselves ('samples': linear, possible since P windows are turned first motion up),

and trains with everything else as the demo: its CLIP loss and learnable temperature, its
optimizer and schedule, batch 32, and its augmented 'paired' pipeline with P windows over the
demo's cached pairs (align_variant.py's cache). Runs, by --pair IMAGE/WAVEFORM:

    oracle/oracle   the ceiling of CLIP training with ideal features on both sides
    tower/oracle    the demo's SFM-tiny image tower against the ideal waveform side
    oracle/tower    the ideal image side against the demo's SeisLM-tiny waveform tower

    python experiments/studies/diagnose_alignment.py --pair oracle/oracle --steps 1200 --lr 0.01
    python experiments/studies/diagnose_alignment.py --pair tower/oracle --waveform-oracle samples --lr 0.003
    python experiments/studies/diagnose_alignment.py --pair oracle/tower 'model.waveform.overrides={...}'
    python experiments/studies/diagnose_alignment.py --pair oracle/tower data.augment=False  # no augmentation
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from align_variant import cached_pairs  # the sibling study (run as a script, its folder is on sys.path)

from seisfuse.data.synthetic import STATION
from seisfuse.demo import HELDOUT_PAIRS, HELDOUT_SEED, TRAIN_SEED, demo_config, model_inputs, pair_batches
from seisfuse.eval.metrics import retrieval_metrics
from seisfuse.losses import clip_loss
from seisfuse.models.joint import Tower, unit_vectors
from seisfuse.train.config import apply_overrides
from seisfuse.train.optim import optimizer_from_config
from seisfuse.train.tasks import make_task

ROOT = Path(__file__).resolve().parents[2]  # the repository


class StationTraceOracle(nn.Module):
    """Images [B, H, W, 1] -> the mean of the 16 columns around the station -> linear map."""

    embed_dim: int

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        trace = images[:, :, STATION - 8:STATION + 8, 0].mean(axis=-1)  # a left-right flip keeps it
        return unit_vectors(nn.Dense(self.embed_dim, use_bias=False)(trace))


class WaveformOracle(nn.Module):
    """P windows [B, T, 3] (P at sample `before`) -> Z from 0.1 s before to 1.5 s after P, as
    samples or as its normalised autocorrelation (features: 'samples' | 'autocorrelation') ->
    linear map."""

    embed_dim: int
    before: int
    features: str

    @nn.compact
    def __call__(self, waveforms: jax.Array) -> jax.Array:
        z = waveforms[:, self.before - 10:self.before + 150, 0]
        if self.features == "autocorrelation":
            lags = jnp.fft.irfft(jnp.abs(jnp.fft.rfft(z, 512, axis=1)) ** 2, axis=1)[:, :200]
            z = lags / (lags[:, :1] + 1e-6)
        return unit_vectors(nn.Dense(self.embed_dim, use_bias=False)(z))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, as align_variant.py")
    parser.add_argument("--pair", default="oracle/oracle",
                        choices=["oracle/oracle", "tower/oracle", "oracle/tower"])
    parser.add_argument("--waveform-oracle", default="autocorrelation",
                        choices=["autocorrelation", "samples"])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the demo's)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "seisfuse-pairs")
    args = parser.parse_args()

    config = apply_overrides(demo_config(), args.overrides)
    config.total_steps = args.steps
    if args.lr is not None:
        config.optimizer.lr = args.lr
    task = make_task(config)
    before, _ = config.data.p_window
    image_side, waveform_side = args.pair.split("/")
    joint = task.cfg
    models = {
        "image": (Tower(joint.tower("image"), joint.embed_dim, joint.head) if image_side == "tower"
                  else StationTraceOracle(joint.embed_dim)),
        "waveform": (Tower(joint.tower("waveform"), joint.embed_dim, joint.head) if waveform_side == "tower"
                     else WaveformOracle(joint.embed_dim, before, args.waveform_oracle)),
    }
    train_set = cached_pairs(args.cache, TRAIN_SEED, config.data.num_examples)
    heldout = model_inputs(cached_pairs(args.cache, HELDOUT_SEED, HELDOUT_PAIRS), config.data.p_window)
    batches = pair_batches(config, train_set)

    first = next(batches)
    keys = jax.random.split(jax.random.key(config.seed))
    params = {m: model.init(k, jnp.asarray(first[m][:1], jnp.float32))
              for (m, model), k in zip(models.items(), keys, strict=True)}
    params["logit_scale"] = jnp.float32(joint.logit_scale_init)
    labels = jax.tree.map(lambda p: "no_decay" if p.ndim <= 1 else "decay", params)
    tx = optimizer_from_config(config.optimizer, labels, config.total_steps)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, images, waveforms):
        def loss_fn(p):
            return clip_loss(models["image"].apply(p["image"], images),
                             models["waveform"].apply(p["waveform"], waveforms), p["logit_scale"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    batch = first
    for i in range(config.total_steps):
        params, opt_state, loss = step(params, opt_state, jnp.asarray(batch["image"], jnp.float32),
                                       jnp.asarray(batch["waveform"], jnp.float32))
        if (i + 1) % 200 == 0:
            print(f"step {i + 1}: loss {float(loss):.3f}", file=sys.stderr, flush=True)
        batch = next(batches)
    seconds = time.perf_counter() - start
    embeddings = {m: np.asarray(jax.jit(model.apply)(params[m], jnp.asarray(heldout[m], jnp.float32)))
                  for m, model in models.items()}
    r = retrieval_metrics(embeddings)
    oracle = f" ({args.waveform_oracle} oracle)" if "oracle" in args.pair.split("/")[1] else ""
    print(f"{args.pair}{oracle} {' '.join(args.overrides)}, {config.total_steps} steps, "
          f"lr {config.optimizer.lr:g}: held-out R@10 "
          f"img2wav {r['retrieval/img2wav/R@10']:.3f} wav2img {r['retrieval/wav2img/R@10']:.3f} "
          f"(chance {r['chance/R@10']:.3f}), train {seconds:.0f} s")


if __name__ == "__main__":
    main()
