"""`seisfuse demo`: align seismic images and seismograms on a CPU in a few minutes, end to end.

Generates physics-paired synthetic data (seisfuse.data.synthetic) on every core, trains the tiny
joint model with the training engine, and evaluates retrieval on held-out pairs (a different
dataset seed) against the chance level and the same model untrained. Writes to the output folder:
metrics.json, summary.txt, config.json, command.json, checkpoints/, TensorBoard events,
figures/*.png and report.html (`seisfuse view`: every figure, the curves and the config in one page).

Everything here is light to import (jax is imported when a function needs it): the generator's
worker processes import this module.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from seisfuse.configs.align import TRAIN_PAIRS, TRAIN_SEED

HELDOUT_PAIRS, HELDOUT_SEED = 256, 1  # the held-out pairs retrieval is measured on (not trained on)
METADATA = ("p_sample", "s_sample", "depth_km", "distance_km", "magnitude", "has_salt")


def demo_config() -> ml_collections.ConfigDict:
    """The recipe the demo trains: the packaged align:tiny config (seisfuse/configs/align.py says
    why each choice)."""
    from seisfuse.train.config import load_config

    return load_config("align:tiny")


def _pair(seed_index: tuple[int, int]) -> dict[str, np.ndarray]:
    """One generated pair, normalised as the 'paired' pipeline does, stored as float16."""
    from seisfuse.data import transforms
    from seisfuse.data.synthetic import generate_pair

    ex = generate_pair(*seed_index)
    out = {"image": transforms.zscore_image(ex["image"]).astype(np.float16),
           "waveform": transforms.normalize_waveform(ex["waveform"]).astype(np.float16)}
    out.update({k: np.asarray(ex[k]) for k in METADATA})
    return out


def generate_pairs(seed: int, count: int, workers: int | None = None,
                   what: str = "pairs") -> dict[str, np.ndarray]:
    """`count` pairs of dataset `seed` as stacked arrays, made by `workers` processes (default: all
    cores; 1 = in this process). Worker processes are spawned, so a calling script needs the usual
    `if __name__ == "__main__":` guard."""
    workers = workers or os.cpu_count() or 1
    jobs = [(seed, i) for i in range(count)]
    examples: list[dict[str, np.ndarray]] = []
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if workers == 1:
            results = map(_pair, jobs)
        else:  # spawn: never fork a process that may hold JAX threads
            spawn = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=spawn))
            results = pool.map(_pair, jobs, chunksize=16)
        for ex in results:
            examples.append(ex)
            if len(examples) % 64 == 0 or len(examples) == count:
                _progress(f"generating {what}", len(examples), count, start)
    return {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}


def _progress(what: str, done: int, total: int, start: float) -> None:
    width = 24
    filled = int(width * done / total)
    rate = done / max(time.perf_counter() - start, 1e-9)
    end = "\n" if done == total else "\r"
    print(f"{what} {done}/{total} [{'#' * filled}{'.' * (width - filled)}] {rate:.0f}/s", end=end,
          file=sys.stderr, flush=True)


def run_demo(out: str | Path, *, train_pairs: int = TRAIN_PAIRS, heldout_pairs: int = HELDOUT_PAIRS,
             steps: int | None = None, workers: int | None = None) -> dict[str, float]:
    """The whole demo; returns the metrics written to out/metrics.json."""
    import flax.linen as nn
    import jax

    from seisfuse.eval.embed import Embedder
    from seisfuse.eval.metrics import retrieval_metrics

    out = Path(out)
    if (out / "checkpoints").exists() or (out / "metrics.json").exists():
        raise FileExistsError(f"{out} already holds a demo run: choose a new --out folder")
    if heldout_pairs < 10 or train_pairs < 1:
        raise ValueError(f"need >= 10 held-out pairs and some training pairs, got {heldout_pairs} "
                         f"and {train_pairs}")
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    config = demo_config()
    config.data.num_examples = train_pairs
    if steps is not None:
        config.total_steps = steps
        config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, max(steps // 10, 0))
    if train_pairs < config.batch_size:
        raise ValueError(f"need at least batch_size={config.batch_size} training pairs, got {train_pairs}")

    train_set = generate_pairs(TRAIN_SEED, train_pairs, workers, "training pairs")
    heldout = generate_pairs(HELDOUT_SEED, heldout_pairs, workers, "held-out pairs")
    generated = time.perf_counter()

    task, state = train_on_pairs(config, train_set, out)  # also writes out/config.json
    trained = time.perf_counter()

    untrained_params = jax.jit(lambda key: nn.unbox(task.init_params(key)))(jax.random.key(config.seed))
    inputs = model_inputs(heldout, config.data.p_window)
    embeddings = Embedder(task, state.params).embed_all(inputs)
    floor = Embedder(task, untrained_params).embed_all(inputs)
    metrics = retrieval_metrics(embeddings, prefix="retrieval")
    metrics.update(retrieval_metrics(floor, prefix="untrained"))
    metrics.update({"train/pairs": float(train_pairs), "train/steps": float(config.total_steps),
                    "train/batch_size": float(config.batch_size),
                    "time/generate_s": generated - began, "time/train_s": trained - generated})
    _figures(out / "figures", heldout, embeddings)
    metrics["time/total_s"] = time.perf_counter() - began
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out / "summary.txt").write_text(summary(metrics))
    print(summary(metrics), flush=True)
    from seisfuse.eval.view import view_run

    print(f"report: {view_run(out)} (open it in a browser)", flush=True)
    return metrics


def train_on_pairs(config: ml_collections.ConfigDict, train_set: dict[str, np.ndarray],
                   workdir: str | Path) -> tuple[Any, Any]:
    """(task, final train state) of the engine trained on in-memory pairs from `generate_pairs`."""
    from seisfuse.train.loop import train
    from seisfuse.train.tasks import make_task

    task = make_task(config)
    return task, train(task, config, workdir, data=pair_batches(config, train_set))


def pair_batches(config: ml_collections.ConfigDict,
                 train_set: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """The demo's endless stream of training batches: the 'paired' pipeline over in-memory pairs,
    built from config.data as the engine builds its synthetic one."""
    from seisfuse.data.pipeline import ArraySource
    from seisfuse.train.loop import config_pipeline

    source = ArraySource(**{k: v for k, v in train_set.items() if k != "has_salt"})
    return iter(config_pipeline(source, "paired", config, config.batch_size))


def model_inputs(pairs: dict[str, np.ndarray], p_window: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """Pairs as the model reads them: with a P window, each waveform cut around its P pick and
    renormalised, as the training pipeline does."""
    from seisfuse.data import transforms

    if not p_window:
        return pairs
    before, length = p_window
    cut = [transforms.normalized_p_window(w.astype(np.float32), p, before, length)
           for w, p in zip(pairs["waveform"], pairs["p_sample"], strict=True)]
    return {**pairs, "waveform": np.stack(cut)}


def _figures(directory: Path, heldout: dict[str, np.ndarray], embeddings: dict[str, np.ndarray]) -> None:
    from seisfuse.eval import plots
    from seisfuse.eval.metrics import similarity

    sim = similarity(embeddings["waveform"], embeddings["image"])
    images = heldout["image"].astype(np.float32)
    waveforms = heldout["waveform"].astype(np.float32)
    plots.retrieval_grid(directory / "retrieval_grid.png", waveforms, images, sim, queries=range(6), k=4)
    n = min(64, len(images))
    plots.similarity_matrix(directory / "similarity_matrix.png", embeddings["image"][:n],
                            embeddings["waveform"][:n], title=f"cosine similarity, {n} held-out pairs")
    from seisfuse.data.transforms import SAMPLING_RATE

    labels = {"S-P time (s)": (heldout["s_sample"] - heldout["p_sample"]) / SAMPLING_RATE,
              "salt in section": heldout["has_salt"].astype(float)}
    plots.joint_space_map(directory / "joint_space.png", embeddings, labels)


def summary(metrics: dict[str, float]) -> str:
    """A few lines a person reads first: recall both ways beside chance and the untrained floor."""
    n = int(metrics["num_pairs"])
    lines = [f"seisfuse demo: {int(metrics['train/pairs'])} training pairs, "
             f"{int(metrics['train/steps'])} steps "
             f"(batch {int(metrics['train/batch_size'])}); retrieval among {n} held-out pairs "
             f"(total {metrics['time/total_s']:.0f} s)", "",
             f"{'':18s}{'R@1':>8s}{'R@5':>8s}{'R@10':>8s}{'median rank':>13s}"]
    for prefix, name in (("retrieval", "trained"), ("untrained", "untrained"), ("chance", "chance")):
        for direction in ("img2wav", "wav2img"):
            key = prefix if prefix == "chance" else f"{prefix}/{direction}"
            label = f"{name} {direction}" if prefix != "chance" else "chance"
            lines.append(f"{label:18s}" + "".join(f"{metrics[f'{key}/R@{k}']:8.3f}" for k in (1, 5, 10))
                         + f"{metrics[f'{key}/median_rank']:13.1f}")
            if prefix == "chance":
                break
    best = max(metrics["retrieval/img2wav/R@10"], metrics["retrieval/wav2img/R@10"])
    lines += ["", f"best R@10 = {best:.3f} = {best / metrics['chance/R@10']:.1f}x chance "
                  f"({metrics['chance/R@10']:.3f})"]
    return "\n".join(lines) + "\n"
