"""Tasks: what the generic loop needs to know about an objective, and nothing more.

A task builds its params, computes its loss on a batch, labels its params for the optimizer, and
turns a host-local raw batch into model inputs with host-side randomness (MAE noise, wav2vec2 span
masks and negatives) drawn from one explicit numpy Generator per example, keyed by the example's
global index: a resumed run, or a run split over more processes, sees the same masks.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import path_aware_map

from seisfuse.convert.towers import load_tower_weights, tower_from_converted
from seisfuse.data.transforms import WINDOW
from seisfuse.losses import (
    CLIP_LOGIT_SCALE_INIT,
    SIGLIP_BIAS_INIT,
    SIGLIP_LOGIT_SCALE_INIT,
    clip_loss,
    siglip_loss,
)
from seisfuse.masking import pretraining_masks
from seisfuse.models.joint import (
    TOWER_KINDS,
    JointConfig,
    JointEmbedding,
    TowerConfig,
    logit_params,
    pooled_width,
)
from seisfuse.models.mae import MAEConfig, MaskedAutoencoder, check_mask_ratio
from seisfuse.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForPreTraining
from seisfuse.parallel import make_mesh
from seisfuse.train.optim import (
    cosine_anneal,
    joint_param_labels,
    mae_layer_scales,
    mae_param_labels,
    parse_trainable,
)

Batch = Mapping[str, Any]


class Task(Protocol):
    name: str
    data_task: str  # which seisfuse.data.pipeline task feeds it: "mae", "waveform", "paired", ...

    def init_params(self, key: jax.Array) -> Any:
        """Boxed (LogicallyPartitioned) params, as `Module.init(...)['params']`."""

    def loss(self, params: Any, batch: Batch, key: jax.Array, step: jax.Array) -> tuple[jax.Array, dict]:
        """Scalar loss and a dict of scalar metrics for one (micro)batch."""

    def param_labels(self, params: Any) -> Any:
        """'decay' / 'no_decay' / 'frozen' per parameter."""

    def layer_scales(self, params: Any, layer_decay: float) -> Any:
        """Per-parameter lr factors for layer-wise decay, or None when the task has none."""

    def prepare(self, raw: Batch, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        """Host-local raw batch (seisfuse.data.pipeline keys: image, waveform, ...) -> model inputs,
        adding host-side random masks (one rng per example)."""

    def random_example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One raw example of random arrays of the right shapes (for smoke tests and benchmarks)."""

    def flops_per_example(self) -> float:
        """Analytic training FLOPs (forward + backward = 3x forward matmul FLOPs) for one example."""


def _transformer_flops(tokens: int, width: int, hidden: int, depth: int) -> float:
    """Forward matmul FLOPs of `depth` transformer layers: projections, MLP and attention scores."""
    return depth * (2 * tokens * (4 * width * width + 2 * width * hidden) + 4 * tokens * tokens * width)


@dataclasses.dataclass(frozen=True)
class MAEPretraining:
    """SFM/MAE pretraining: reconstruct masked patches; noise drawn on the host."""

    cfg: MAEConfig
    mask_ratio: float = 0.75
    name: str = "mae"
    data_task: str = "mae"

    def __post_init__(self) -> None:
        check_mask_ratio(self.mask_ratio)  # refused when the run is built, not at the first step

    @property
    def model(self) -> MaskedAutoencoder:
        return MaskedAutoencoder(self.cfg)

    def init_params(self, key: jax.Array) -> Any:
        c = self.cfg
        images = jnp.zeros((1, c.img_size, c.img_size, c.in_chans))
        return self.model.init(key, images, noise=jnp.zeros((1, c.num_patches)),
                               mask_ratio=self.mask_ratio)["params"]

    def loss(self, params: Any, batch: Batch, key: jax.Array, step: jax.Array) -> tuple[jax.Array, dict]:
        loss, _, _ = self.model.apply({"params": params}, batch["images"], noise=batch["noise"],
                                      mask_ratio=self.mask_ratio)
        return loss, {}

    def param_labels(self, params: Any) -> Any:
        return mae_param_labels(params, self.cfg.learned_pos_embed)

    def layer_scales(self, params: Any, layer_decay: float) -> Any:
        return mae_layer_scales(params, self.cfg.depth, layer_decay)

    def prepare(self, raw: Batch, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        noise = np.stack([rng.random(self.cfg.num_patches, np.float32) for rng in rngs])
        return {"images": np.asarray(raw["image"], np.float32), "noise": noise}

    def random_example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.cfg
        return {"image": rng.standard_normal((c.img_size, c.img_size, c.in_chans), np.float32)}

    def flops_per_example(self) -> float:
        c = self.cfg
        length = c.num_patches
        kept = int(length * (1 - self.mask_ratio)) + 1
        forward = 2 * length * c.patch_dim * c.embed_dim
        forward += _transformer_flops(kept, c.embed_dim, int(c.embed_dim * c.mlp_ratio), c.depth)
        if c.decoder:
            dd = c.decoder_embed_dim
            forward += 2 * kept * c.embed_dim * dd + 2 * (length + 1) * dd * c.patch_dim
            forward += _transformer_flops(length + 1, dd, int(dd * c.mlp_ratio), c.decoder_depth)
        return 3.0 * forward


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Pretraining:
    """SeisLM/wav2vec 2.0 pretraining with the Gumbel temperature annealed 2.0 -> 0.5 (cosine)."""

    cfg: Wav2Vec2Config
    num_samples: int = WINDOW
    total_steps: int = 1
    gumbel_start: float = 2.0
    gumbel_end: float = 0.5
    name: str = "seislm"
    data_task: str = "waveform"

    @property
    def model(self) -> Wav2Vec2ForPreTraining:
        return Wav2Vec2ForPreTraining(self.cfg)

    @property
    def frames(self) -> int:
        return self.cfg.frames(self.num_samples)

    def init_params(self, key: jax.Array) -> Any:
        c, frames = self.cfg, self.frames
        return self.model.init(
            {"params": key, "gumbel": key}, jnp.zeros((1, self.num_samples, c.input_channels)),
            mask_time_indices=jnp.zeros((1, frames), bool),
            sampled_negative_indices=jnp.zeros((1, frames, c.num_negatives), jnp.int32))["params"]

    def loss(self, params: Any, batch: Batch, key: jax.Array, step: jax.Array) -> tuple[jax.Array, dict]:
        # Negatives are stored per example (0..L-1) so a batch can be split into micro-batches;
        # the model indexes the flattened B·L frames.
        batch_size, frames = batch["mask_time_indices"].shape
        flat = batch["negatives"] + (jnp.arange(batch_size) * frames)[:, None, None]
        temperature = cosine_anneal(step, self.total_steps, self.gumbel_start, self.gumbel_end)
        out = self.model.apply({"params": params}, batch["waveforms"],
                               mask_time_indices=batch["mask_time_indices"], sampled_negative_indices=flat,
                               gumbel_temperature=temperature, train=True, rngs={"gumbel": key})
        # SeisLM's training step divides the sum-reduced objective by the number of masked frames.
        masked = jnp.maximum(jnp.sum(batch["mask_time_indices"]), 1)
        metrics = {k: out[k] / masked for k in ("contrastive_loss", "diversity_loss")}
        metrics["codevector_perplexity"] = out["codevector_perplexity"]
        return out["loss"] / masked, {**metrics, "gumbel_temperature": temperature}

    def param_labels(self, params: Any) -> Any:
        return path_aware_map(lambda path, _: "no_decay", params)  # SeisLM: no weight decay

    def layer_scales(self, params: Any, layer_decay: float) -> Any:
        return None

    def prepare(self, raw: Batch, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        # One example per call: each gets its own span-count draw ε, the per-example distribution
        # of the original; negatives of a batch of one are already indices into that example.
        c = self.cfg
        masks = [pretraining_masks(rng, 1, self.frames, mask_prob=c.mask_time_prob,
                                   mask_length=c.mask_time_length, min_masks=c.mask_time_min_masks,
                                   num_negatives=c.num_negatives) for rng in rngs]
        return {"waveforms": np.asarray(raw["waveform"], np.float32),
                "mask_time_indices": np.concatenate([m for m, _ in masks]),
                "negatives": np.concatenate([n for _, n in masks]).astype(np.int32)}

    def random_example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"waveform": rng.standard_normal((self.num_samples, self.cfg.input_channels), np.float32)}

    def flops_per_example(self) -> float:
        c, length = self.cfg, self.frames
        forward = _wav2vec2_encoder_flops(c, self.num_samples)
        forward += 2 * length * c.conv_dim[-1] * c.num_codevectors  # quantizer logits
        forward += 2 * length * (c.hidden_size + c.codevector_dim) * c.proj_codevector_dim
        masked = length * min(1.0, c.mask_time_prob)
        forward += 2 * masked * (c.num_negatives + 1) * c.proj_codevector_dim
        return 3.0 * forward


def make_task(config: Mapping[str, Any]) -> Task:
    """The task an experiment config names (`config.task`), built from its `model` section."""
    if config["task"] == "align":
        return AlignTask.from_config(config)
    from seisfuse.train.finetune import SEISLM_TASKS, SFM_TASKS, make_finetune_task

    if config["task"] in SFM_TASKS + SEISLM_TASKS:
        return make_finetune_task(config)
    model = dict(config["model"])
    preset = model.pop("preset")
    if config["task"] == "mae":
        return MAEPretraining(MAEConfig.preset(preset, **model), mask_ratio=config["mask_ratio"])
    if config["task"] == "seislm":
        return Wav2Vec2Pretraining(Wav2Vec2Config.preset(preset, **model),
                                   num_samples=config["num_samples"],
                                   total_steps=config["total_steps"])
    raise ValueError(f"unknown task {config['task']!r}; choose 'mae', 'seislm', 'align', "
                     f"{', '.join(repr(t) for t in SFM_TASKS + SEISLM_TASKS)}")


@dataclasses.dataclass(frozen=True)
class AlignTask:
    """Contrastive alignment of a joint model's towers: CLIP or SigLIP over pairs of modalities.

    `trainable` holds per-modality freezing policies ('all', 'none', 'last:K'); frozen params get
    the 'frozen' label (no optimizer state) and a stop_gradient, so XLA drops their backward
    pass. `weights` maps a modality to a `seisfuse convert` directory whose encoder weights
    replace the tower's fresh ones. With several pairs the loss is their mean; the loss functions
    get the mesh and use the global batch as negatives.
    """

    cfg: JointConfig
    loss_name: str = "siglip"
    pairs: tuple[tuple[str, str], ...] = (("image", "waveform"),)
    trainable: tuple[tuple[str, str], ...] = ()
    weights: tuple[tuple[str, str], ...] = ()
    mesh_axes: tuple[tuple[str, int], ...] = (("data", -1), ("fsdp", 1), ("tensor", 1))
    num_samples: int = WINDOW
    name: str = "align"
    data_task: str = "paired"

    def __post_init__(self) -> None:
        if self.loss_name not in ("clip", "siglip"):
            raise ValueError(f"unknown contrastive loss {self.loss_name!r}: 'clip' or 'siglip'")
        if self.loss_name == "siglip" and self.cfg.logit_bias_init is None:
            raise ValueError("the siglip loss needs a learnable bias: set logit_bias_init (e.g. -10)")
        for pair in self.pairs:
            for modality in pair:
                self.cfg.tower(modality)  # raises naming the unknown modality
        if not self.pairs:
            raise ValueError("an align task needs at least one pair of modalities")

    @property
    def model(self) -> JointEmbedding:
        return JointEmbedding(self.cfg)

    @functools.cached_property
    def mesh(self) -> Any:
        return make_mesh(**dict(self.mesh_axes))

    def inputs(self, batch: Batch) -> dict[str, Any]:
        """The model inputs (per modality) of a batch keyed like the data pipeline's."""
        missing = [t.input_key for t in self.cfg.towers if t.input_key not in batch]
        if missing:
            raise KeyError(f"batch lacks {sorted(set(missing))} (has {sorted(batch)})")
        return {t.modality: batch[t.input_key] for t in self.cfg.towers}

    def init_params(self, key: jax.Array) -> Any:
        example = self.random_example(np.random.default_rng(0))
        boxed = self.model.init(key, self.inputs({k: jnp.zeros((1, *v.shape)) for k, v in example.items()}))
        boxed = boxed["params"]
        for modality, directory in self.weights:
            kind, _, params = _converted(directory)
            values = load_tower_weights(self.cfg, nn.unbox(boxed), modality, kind, params)
            boxed = jax.tree.map(_rebox, boxed, values, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        return boxed

    def loss(self, params: Any, batch: Batch, key: jax.Array, step: jax.Array) -> tuple[jax.Array, dict]:
        labels = self.param_labels(params)
        params = jax.tree.map(lambda p, label: jax.lax.stop_gradient(p) if label == "frozen" else p,
                              params, labels)
        embeddings = self.model.apply({"params": params}, self.inputs(batch))
        scale, bias = logit_params(params)
        per_pair = {}
        for a, b in self.pairs:
            if self.loss_name == "clip":
                per_pair[f"loss/{a}-{b}"] = clip_loss(embeddings[a], embeddings[b], scale, mesh=self.mesh)
            else:
                per_pair[f"loss/{a}-{b}"] = siglip_loss(embeddings[a], embeddings[b], scale, bias,
                                                        mesh=self.mesh)
        loss = sum(per_pair.values()) / len(per_pair)
        metrics = {"temperature": jnp.exp(scale), **(per_pair if len(per_pair) > 1 else {})}
        if bias is not None:
            metrics["bias"] = bias
        return loss, metrics

    def param_labels(self, params: Any) -> Any:
        return joint_param_labels(self.cfg, params, dict(self.trainable))

    def layer_scales(self, params: Any, layer_decay: float) -> Any:
        return None

    def prepare(self, raw: Batch, rngs: Sequence[np.random.Generator]) -> dict[str, np.ndarray]:
        keys = sorted({t.input_key for t in self.cfg.towers})
        missing = [k for k in keys if k not in raw]
        if missing:
            raise KeyError(f"raw batch lacks {missing} (has {sorted(raw)}): use the 'paired' data task")
        return {k: np.asarray(raw[k], np.float32) for k in keys}

    def random_example(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shapes = {t.input_key: TOWER_KINDS[t.kind].input_shape(t.backbone, self.num_samples)
                  for t in self.cfg.towers}
        return {key: rng.standard_normal(shape, np.float32) for key, shape in shapes.items()}

    def flops_per_example(self) -> float:
        """Forward FLOPs of each tower and head, x3 where trained, x1 for frozen towers (no backward);
        a tower training its last K of N blocks counts 1 + 2K/N. The Mel STFT and the loss are
        left out (well under 1 %)."""
        trainable = dict(self.trainable)
        total = 0.0
        for t in self.cfg.towers:
            kind = TOWER_KINDS[t.kind]
            depth, width = kind.depth(t.backbone), kind.width(t.backbone)
            k = parse_trainable(trainable.get(t.modality, "all"), depth)
            pooled = pooled_width(t, self.num_samples)
            head = (2 * pooled * width + 2 * width * self.cfg.embed_dim if self.cfg.head == "mlp"
                    else 2 * pooled * self.cfg.embed_dim)
            total += (1 + 2 * k / depth) * _tower_flops(t.backbone, self.num_samples) + 3 * head
        return total

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AlignTask:
        """Build from an experiment config (configs/align.py): loss, pairs, mesh and the model section
        (modalities, embed_dim, head, dtype, optionally logit_scale_init (default: the loss's), and
        per modality kind, preset or weights, pooling, trainable, overrides)."""
        model = config["model"]
        scale, bias = ((SIGLIP_LOGIT_SCALE_INIT, SIGLIP_BIAS_INIT) if config["loss"] == "siglip"
                       else (CLIP_LOGIT_SCALE_INIT, None))
        if model["logit_scale_init"] is not None:
            scale = float(model["logit_scale_init"])
        towers, trainable, weights = [], [], []
        for modality in model["modalities"]:
            spec = model[modality]
            overrides = {"dtype": model["dtype"], **dict(spec["overrides"])}
            if spec["weights"]:
                kind, converted, _ = _converted(spec["weights"])
                towers.append(tower_from_converted(modality, spec["kind"], kind, converted,
                                                   spec["pooling"], **overrides))
                weights.append((modality, str(spec["weights"])))
            else:
                towers.append(TowerConfig.from_preset(modality, spec["kind"], spec["preset"],
                                                      spec["pooling"], **overrides))
            trainable.append((modality, str(spec["trainable"])))
        cfg = JointConfig(tuple(towers), embed_dim=model["embed_dim"], head=model["head"],
                          logit_scale_init=scale, logit_bias_init=bias)
        pairs = tuple(tuple(p) for p in config["pairs"])
        p_window = config["data"]["p_window"]
        mel = [t.modality for t in towers if t.kind == "mel-sfm"]
        if p_window and mel:
            raise ValueError(f"data.p_window cuts waveforms to {p_window[1]} samples, but the mel-sfm tower "
                             f"of {mel} makes its Mel image from whole {WINDOW}-sample records: drop "
                             "data.p_window (configs/align.py's -mel variants do)")
        return cls(cfg, loss_name=config["loss"], pairs=pairs, trainable=tuple(trainable),
                   weights=tuple(weights), mesh_axes=tuple(dict(config["mesh"]).items()),
                   num_samples=int(p_window[1]) if p_window else WINDOW)


def _wav2vec2_encoder_flops(c: Wav2Vec2Config, num_samples: int) -> float:
    """Forward matmul FLOPs of the wav2vec 2.0 encoder (conv feature encoder, feature projection,
    positional conv, transformer) for one example of `num_samples` samples."""
    forward, length, channels = 0.0, num_samples, c.input_channels
    for dim, kernel, stride in zip(c.conv_dim, c.conv_kernel, c.conv_stride, strict=True):
        length = (length - kernel) // stride + 1
        forward += 2 * length * kernel * channels * dim
        channels = dim
    hidden = c.hidden_size
    forward += 2 * length * channels * hidden  # feature projection
    forward += 2 * length * c.num_conv_pos_embeddings * hidden * hidden / c.num_conv_pos_embedding_groups
    return forward + _transformer_flops(length, hidden, c.intermediate_size, c.num_hidden_layers)


def _tower_flops(backbone: MAEConfig | Wav2Vec2Config, num_samples: int) -> float:
    """Forward matmul FLOPs of one tower's encoder for one example (all patches: no masking)."""
    if isinstance(backbone, Wav2Vec2Config):
        return _wav2vec2_encoder_flops(backbone, num_samples)
    c = backbone
    return (2 * c.num_patches * c.patch_dim * c.embed_dim
            + _transformer_flops(c.num_patches + 1, c.embed_dim, int(c.embed_dim * c.mlp_ratio), c.depth))


def _rebox(box: Any, value: jax.Array) -> Any:
    """`value` in `box`'s logical-axis metadata (a bare value stays bare)."""
    return box.replace_boxed(value) if isinstance(box, nn.Partitioned) else value


@functools.lru_cache(maxsize=8)
def _converted(directory: str) -> tuple[str, dict, Any]:
    """A `seisfuse convert` directory, read once per process (init_params runs several times)."""
    from seisfuse.convert import load_converted

    return load_converted(directory)
