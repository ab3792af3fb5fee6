"""How much does a synthetic pair share? Probes that need no deep model, on held-out pairs.

Date: 2026-11-23 (the first generator), re-run 2026-11-30 (the shared-physics generator with weak
codas).
Question: does an image <-> waveform pair from the synthetic generator share information that a
simple read-out can use to retrieve one from the other on held-out pairs?
Result (experiments/RESULTS.md, "How the demo's recipe was found"): with the first generator, no:
the MLP probe reached R@10 0.043 / 0.043 held out (chance 0.039) and nothing about the section
was readable from the waveform. With the 2026-11-30 generator, yes: interferometry with no
parameters 0.672 / 0.824, a ridge map from the P-aligned Z trace to the station trace 0.879 /
0.883 (the envelope MLP only 0.102 / 0.098: envelopes miss the reverberations' timing).
Command: python experiments/studies/probe_pairing.py --train-pairs 4096

The demo's joint model once stayed at chance on the physics-paired generator; this script asks whether
any simple read-out finds the shared information, with every advantage given to the waveform
side (its P onset taken from the generator's pick, which the model never sees):

- image features: per-row RMS and mean amplitude (the reflector series) and a 56 x 14 energy map
  of the central traces; waveform features: log envelopes of Z and of the horizontals from 1 s
  before to 8 s after P at 0.05 s, and the Z trace itself at 0.05 s;
- a two-tower MLP (256 hidden units, 64-d output) trained with the CLIP loss on the features of
  the training pairs, then image<->waveform retrieval on held-out pairs (another dataset seed);
- ridge regressions from each side's features to the generator's labels (salt in the section,
  number of units, event depth, distance, magnitude): which side sees what;
- no learning at all, interferometry: the autocorrelation of Z from 0.1 s before to 1.5 s after P
  (its free-surface reverberations, lags 0.08-1.34 s) against the reflector series of the image's
  station trace on the same lags (rows are 6 ms of two-way time): retrieval by their cosine, a
  read-out with no parameters;
- a linear map (ridge) from the P-aligned Z trace (0.3 s before to 1.5 s after P) to that
  reflector series, fitted on the training pairs: what a linear read-out of the window recovers.

    python experiments/studies/probe_pairing.py --train-pairs 6000 --heldout-pairs 256
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seisfuse import losses
from seisfuse.data.synthetic import STATION
from seisfuse.data.transforms import p_window
from seisfuse.demo import generate_pairs
from seisfuse.eval.metrics import retrieval_metrics

ROOT = Path(__file__).resolve().parents[2]  # the repository

LABELS = ("has_salt", "depth_km", "distance_km", "magnitude")


def image_features(images: np.ndarray) -> np.ndarray:
    x = images[..., 0].astype(np.float32)
    n = len(x)
    centre = x[:, :, 56:168].reshape(n, 56, 4, 14, 8).mean(axis=(2, 4)).reshape(n, -1)
    return np.concatenate([np.sqrt((x ** 2).mean(axis=2)), x.mean(axis=2), centre], axis=1)


def waveform_features(waveforms: np.ndarray, p_sample: np.ndarray) -> np.ndarray:
    out = []
    for w, p in zip(waveforms.astype(np.float32), p_sample.astype(int), strict=True):
        x = np.pad(w, ((200, 1200), (0, 0)))[p + 100:p + 1000]  # 1 s before to 8 s after P
        envelopes = np.stack([np.abs(x[:, 0]), np.hypot(x[:, 1], x[:, 2])]).reshape(2, 180, 5).mean(-1)
        envelopes /= envelopes.max(axis=1, keepdims=True) + 1e-6
        z = x[:, 0].reshape(180, 5).mean(-1) / (np.abs(x[:, 0]).max() + 1e-6)
        out.append(np.concatenate([np.log(envelopes + 1e-2).ravel(), z]))
    return np.array(out)


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def mlp_probe(xi: np.ndarray, xw: np.ndarray, ti: np.ndarray, tw: np.ndarray, steps: int,
              seed: int = 0) -> dict[str, float]:
    def init(key: jax.Array, width: int) -> dict:
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (width, 256)) / np.sqrt(width), "b1": jnp.zeros(256),
                "w2": jax.random.normal(k2, (256, 64)) / 16.0}

    def embed(p: dict, x: jax.Array) -> jax.Array:
        z = jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"]
        return z / jnp.linalg.norm(z, axis=-1, keepdims=True)

    keys = jax.random.split(jax.random.key(seed))
    params = {"i": init(keys[0], xi.shape[1]), "w": init(keys[1], xw.shape[1]),
              "t": jnp.float32(losses.CLIP_LOGIT_SCALE_INIT)}
    tx = optax.adamw(1e-3, weight_decay=1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, a, b):
        def loss_fn(p: dict) -> jax.Array:
            return losses.clip_loss(embed(p["i"], a), embed(p["w"], b), p["t"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(xi), min(256, len(xi)), replace=False)
        params, opt, _ = step(params, opt, xi[idx], xw[idx])
    held = retrieval_metrics({"image": np.asarray(embed(params["i"], ti)),
                              "waveform": np.asarray(embed(params["w"], tw))})
    seen = retrieval_metrics({"image": np.asarray(embed(params["i"], xi[:len(ti)])),
                              "waveform": np.asarray(embed(params["w"], xw[:len(ti)]))}, prefix="train")
    return {**held, **{k: v for k, v in seen.items() if k.startswith("train/")}}


def ridge_weights(x: np.ndarray, y: np.ndarray, lam: float = 100.0) -> np.ndarray:
    """Ridge map from x [N, F] to the centred targets y [N(, K)]."""
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ (y - y.mean(0)))


def ridge_corr(x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray, lam: float = 100.0) -> float:
    return float(np.corrcoef(tx @ ridge_weights(x, y, lam) + y.mean(), ty)[0, 1])


LAGS = np.arange(8, 135)  # 10 ms samples: 0.08 s to the section's 1.34 s of two-way time


def station_reflectivity(images: np.ndarray) -> np.ndarray:
    """The station's image trace, resampled from 6 ms rows to the waveform's 10 ms lags."""
    column = images[..., 0].astype(np.float64)[:, :, STATION]
    rows = np.arange(column.shape[1])
    return np.stack([np.interp(LAGS * 10.0 / 6.0, rows, c) for c in column])


def z_after_p(waveforms: np.ndarray, p_sample: np.ndarray, before: int, after: int) -> np.ndarray:
    cut = [p_window(w, p, before, before + after)[:, 0] for w, p in zip(waveforms, p_sample, strict=True)]
    return np.stack(cut).astype(np.float64)


def interferometry_probe(test: dict[str, np.ndarray]) -> dict[str, float]:
    z = z_after_p(test["waveform"], test["p_sample"], 10, 150)
    spectrum = np.fft.rfft(z, 2 * z.shape[1], axis=1)
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, LAGS]
    # Free-surface multiples arrive with the reflection coefficient's sign flipped: -autocorrelation.
    return retrieval_metrics({"image": station_reflectivity(test["image"]), "waveform": -autocorr},
                             prefix="interferometry")


def linear_probe(train: dict[str, np.ndarray], test: dict[str, np.ndarray], lam: float = 100.0) -> dict:
    x, tx = (z_after_p(d["waveform"], d["p_sample"], 30, 150) for d in (train, test))
    w = ridge_weights(x, station_reflectivity(train["image"]), lam)
    return retrieval_metrics({"image": station_reflectivity(test["image"]), "waveform": tx @ w},
                             prefix="linear")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=6000)
    parser.add_argument("--heldout-pairs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/results/probe_pairing.json")
    args = parser.parse_args()
    train = generate_pairs(0, args.train_pairs, what="training pairs")
    test = generate_pairs(1, args.heldout_pairs, what="held-out pairs")
    xi, ti = standardise(image_features(train["image"]), image_features(test["image"]))
    xw, tw = standardise(waveform_features(train["waveform"], train["p_sample"]),
                         waveform_features(test["waveform"], test["p_sample"]))
    result = {"interferometry": interferometry_probe(test), "linear": linear_probe(train, test),
              "mlp_probe": mlp_probe(xi, xw, ti, tw, args.steps), "ridge_test_corr": {}}
    for label in LABELS:
        y, ty = train[label].astype(np.float64), test[label].astype(np.float64)
        result["ridge_test_corr"][label] = {"from_image": ridge_corr(xi, y, ti, ty),
                                            "from_waveform": ridge_corr(xw, y, tw, ty)}
    for name in ("interferometry", "linear"):
        r = result[name]
        print(f"{name} probe: held-out R@10 img2wav {r[f'{name}/img2wav/R@10']:.3f}, "
              f"wav2img {r[f'{name}/wav2img/R@10']:.3f}")
    probe = result["mlp_probe"]
    print(f"MLP probe ({args.train_pairs} pairs): held-out R@10 img2wav "
          f"{probe['retrieval/img2wav/R@10']:.3f}, "
          f"wav2img {probe['retrieval/wav2img/R@10']:.3f} (chance {probe['chance/R@10']:.3f}); "
          f"on training pairs {probe['train/img2wav/R@10']:.3f}")
    for label, corr in result["ridge_test_corr"].items():
        print(f"  {label:12s} held-out correlation of a ridge read-out: from image "
              f"{corr['from_image']:+.3f}, from waveform {corr['from_waveform']:+.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
