"""The align task learns through the training engine when the pairs share information: a positive
control for the demo. Images are horizontal stripes and waveforms sinusoids whose frequencies both
follow one hidden number per pair (random phases and noise otherwise); after a few hundred CPU
steps retrieval on held-out pairs must be far above chance, and the untrained model must not."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from seisfuse.eval.embed import Embedder
from seisfuse.eval.metrics import retrieval_metrics
from seisfuse.train.config import load_config
from seisfuse.train.loop import train
from seisfuse.train.tasks import make_task


def shared_frequency_pairs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    u = rng.random(n)
    rows, samples = np.arange(32)[None, :, None], np.arange(400)[None, :, None]
    images = np.sin(2 * np.pi * (1 + 3 * u)[:, None, None] * rows / 32 + rng.uniform(0, 2 * np.pi, (n, 1, 1)))
    waveforms = np.sin(2 * np.pi * (4 + 12 * u)[:, None, None] * samples / 400
                       + rng.uniform(0, 2 * np.pi, (n, 1, 3)))
    return {"image": (images + 0.3 * rng.standard_normal((n, 32, 32)))[..., None].astype(np.float32),
            "waveform": (waveforms + 0.3 * rng.standard_normal((n, 400, 3))).astype(np.float32)}


class PairStream:
    """Fresh pairs every step, with the state the engine checkpoints."""

    def __init__(self, batch_size: int):
        self.batch_size, self.count = batch_size, 0

    def __iter__(self) -> PairStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        self.count += 1
        return shared_frequency_pairs(np.random.default_rng([7, self.count]), self.batch_size)

    def get_state(self) -> dict[str, int]:
        return {"count": self.count}

    def set_state(self, state: dict[str, int]) -> None:
        self.count = int(state["count"])


def test_alignment_learns_shared_information_far_above_chance(tmp_path):
    config = load_config("configs/align.py:tiny", ["loss=clip", "total_steps=300", "optimizer.warmup_steps=5",
                                                   "log_every=100"])
    config.model.image.overrides = {"img_size": 32, "patch_size": 8}
    config.model.waveform.overrides = {"conv_kernel": [4, 4], "conv_stride": [4, 4],
                                       "num_conv_pos_embeddings": 16}
    # The shared number is a frequency under random phases: a job for mean pooling (the demo's
    # 'flatten' keeps positions, which this control randomises).
    config.model.image.pooling = config.model.waveform.pooling = "mean"
    config.model.image.trainable = "all"  # the demo locks its image tower; this control trains both
    task = make_task(config)
    state = train(task, config, tmp_path, data=PairStream(config.batch_size))
    heldout = shared_frequency_pairs(np.random.default_rng(123), 64)
    trained = retrieval_metrics(Embedder(task, state.params).embed_all(heldout))
    untrained_params = jax.jit(lambda key: nn.unbox(task.init_params(key)))(jax.random.key(config.seed))
    untrained = retrieval_metrics(Embedder(task, untrained_params).embed_all(heldout))
    chance = trained["chance/R@10"]
    for direction in ("img2wav", "wav2img"):
        assert trained[f"retrieval/{direction}/R@10"] >= 4 * chance, trained
        assert trained[f"retrieval/{direction}/median_rank"] <= 8, trained
        assert untrained[f"retrieval/{direction}/R@10"] <= 2.5 * chance, untrained
