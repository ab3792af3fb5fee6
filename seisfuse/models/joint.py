"""Joint embedding: one tower per modality, projected into one shared L2-normalised space.

A `JointConfig` names its modalities and the tower that encodes each ("sfm": SFM's ViT encoder
on seismic images; "seislm": SeisLM's wav2vec 2.0 encoder on 3-C waveforms; "mel-sfm": a second
SFM encoder on the waveform's Mel-spectrogram image, the spectrogram-as-image approach). Each
tower pools its tokens (cls, mean or flatten), a per-modality head projects to `embed_dim`, and the result
is L2-normalised. The model returns {modality: embeddings [B, embed_dim]} for the modalities it
is given, so a third modality (tabular metadata, text) is one more entry in `TOWER_KINDS` and in
the config: the losses take pairs of embeddings and the loop never sees modalities.

The learnable temperature and bias of the contrastive losses are parameters here
(`logit_scale`, `logit_bias`), as in big_vision's two-tower models, so one params tree holds
everything a checkpoint needs. Freezing policies become optimizer labels (`param_labels`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.traverse_util import path_aware_map

from seisfuse.data.spectrogram import SFM_MEL, mel_image
from seisfuse.models.layers import gelu_exact, logical
from seisfuse.models.mae import MAEConfig, MaskedAutoencoder
from seisfuse.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForPreTraining

Backbone = MAEConfig | Wav2Vec2Config
POOLINGS = ("cls", "mean", "flatten", "station")
HEADS = ("linear", "mlp")


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """One modality's encoder: the tower kind (a key of TOWER_KINDS), its backbone and pooling."""

    modality: str
    kind: str
    backbone: Backbone
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.kind not in TOWER_KINDS:
            raise ValueError(f"unknown tower kind {self.kind!r}; choose from {sorted(TOWER_KINDS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        TOWER_KINDS[self.kind].check(self)

    @property
    def input_key(self) -> str:
        """The raw-batch key this tower reads ('image', 'waveform', ...)."""
        return TOWER_KINDS[self.kind].input_key

    @classmethod
    def from_preset(cls, modality: str, kind: str, preset: str, pooling: str = "mean",
                    **overrides: Any) -> TowerConfig:
        """A scratch tower from a named backbone preset (decoder-free for SFM)."""
        tower = TOWER_KINDS.get(kind)
        if tower is None:
            raise ValueError(f"unknown tower kind {kind!r}; choose from {sorted(TOWER_KINDS)}")
        return cls(modality, kind, tower.backbone_preset(preset, **overrides), pooling)

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "kind": self.kind, "pooling": self.pooling,
                "backbone": self.backbone.to_dict()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TowerConfig:
        kind = values["kind"]
        if kind not in TOWER_KINDS:
            raise ValueError(f"unknown tower kind {kind!r}; choose from {sorted(TOWER_KINDS)}")
        backbone = TOWER_KINDS[kind].backbone_type.from_dict(dict(values["backbone"]))
        return cls(values["modality"], kind, backbone, values.get("pooling", "mean"))


@dataclasses.dataclass(frozen=True)
class JointConfig:
    """Towers (one per modality, in order), the shared space and the loss parameters' initial values.

    logit_scale_init is log t (CLIP: log(1/0.07); SigLIP: log 10); logit_bias_init is SigLIP's b
    (−10) or None for no bias (CLIP).
    """

    towers: tuple[TowerConfig, ...]
    embed_dim: int = 128
    head: str = "linear"
    logit_scale_init: float = math.log(10.0)
    logit_bias_init: float | None = -10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "towers", tuple(self.towers))
        names = [t.modality for t in self.towers]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"a joint model needs two or more towers with distinct modality names, "
                             f"got {names}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(t.modality for t in self.towers)

    def tower(self, modality: str) -> TowerConfig:
        for t in self.towers:
            if t.modality == modality:
                return t
        raise KeyError(f"no tower for modality {modality!r}; this model has {list(self.modalities)}")

    def to_dict(self) -> dict[str, Any]:
        return {"towers": [t.to_dict() for t in self.towers], "embed_dim": self.embed_dim,
                "head": self.head, "logit_scale_init": self.logit_scale_init,
                "logit_bias_init": self.logit_bias_init}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> JointConfig:
        values = dict(values)
        towers = tuple(TowerConfig.from_dict(t) for t in values.pop("towers"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown JointConfig fields: {sorted(unknown)}")
        return cls(towers=towers, **values)


# --------------------------------------------------------------------------- towers


class SFMTower(nn.Module):
    """SFM's ViT encoder on images [B, H, W, C]: cls token, mean or flatten of the patch tokens."""

    cfg: TowerConfig
    input_key: ClassVar[str] = "image"
    converted_kind: ClassVar[str] = "sfm"
    backbone_type: ClassVar[type] = MAEConfig

    @staticmethod
    def backbone_preset(preset: str, **overrides: Any) -> MAEConfig:
        return MAEConfig.preset(preset, **{"decoder": False, **overrides})

    @staticmethod
    def check(cfg: TowerConfig) -> None:
        if not isinstance(cfg.backbone, MAEConfig):
            raise ValueError(f"tower {cfg.modality!r} ({cfg.kind}) needs an MAEConfig backbone")

    @staticmethod
    def block(path: tuple[str, ...]) -> int | None:
        """Transformer block index of a parameter path inside the encoder (None outside blocks)."""
        match = re.fullmatch(r"blocks_(\d+)", path[0])
        return int(match.group(1)) if match else None

    @staticmethod
    def is_final_norm(path: tuple[str, ...], backbone: Backbone) -> bool:
        return path[0] == "norm"

    @staticmethod
    def depth(backbone: Backbone) -> int:
        return backbone.depth

    @staticmethod
    def width(backbone: Backbone) -> int:
        return backbone.embed_dim

    @staticmethod
    def input_shape(backbone: Backbone, num_samples: int) -> tuple[int, ...]:
        """One example's input shape (num_samples: waveform length, for waveform-fed towers)."""
        return (backbone.img_size, backbone.img_size, backbone.in_chans)

    @staticmethod
    def tokens(backbone: Backbone, num_samples: int) -> int:
        """Tokens that 'flatten' pooling concatenates: the image's patches."""
        return backbone.num_patches

    def encode_images(self, images: jax.Array) -> jax.Array:
        latent, _, _ = MaskedAutoencoder(self.cfg.backbone, name="encoder").encode(images)
        if self.cfg.pooling == "cls":
            return latent[:, 0]
        if self.cfg.pooling == "station":
            return station_tokens(latent[:, 1:], self.cfg.backbone).reshape(images.shape[0], -1)
        return pool_tokens(latent[:, 1:], self.cfg.pooling)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        return self.encode_images(images)


def station_columns(backbone: MAEConfig) -> list[int]:
    """Patch columns holding the image's two centre traces (W/2 − 1, W/2): where a station-centred
    section puts the station whose record is paired with it, also after a left-right flip."""
    centre = backbone.img_size // 2
    return sorted({(centre - 1) // backbone.patch_size, centre // backbone.patch_size})


def station_tokens(tokens: jax.Array, backbone: MAEConfig) -> jax.Array:
    """Patch tokens [B, L, D] (row-major) -> [B, rows, len(station_columns), D]: every row (two-way
    time) of the station's columns, in place. 'station' pooling flattens them: what the paired
    record shares with a section is the column under its station; the other traces are nuisance
    that a flattened head otherwise learns to memorise."""
    grid, columns = backbone.grid_size, station_columns(backbone)  # one or two adjacent columns
    return tokens.reshape(tokens.shape[0], grid, grid, tokens.shape[-1])[:, :, columns[0]:columns[-1] + 1]


class MelSFMTower(SFMTower):
    """Waveforms [B, 3001, 3] -> SFM Mel image (seisfuse.data.spectrogram.mel_image) -> SFM encoder."""

    input_key: ClassVar[str] = "waveform"

    @staticmethod
    def check(cfg: TowerConfig) -> None:
        SFMTower.check(cfg)
        b = cfg.backbone
        if cfg.pooling == "station":
            raise ValueError(f"tower {cfg.modality!r}: 'station' pooling reads an image's centre traces; "
                             "a Mel image has no station: use 'cls', 'mean' or 'flatten'")
        if (b.img_size, b.in_chans) != (SFM_MEL.n_mels, 1) or SFM_MEL.frames != SFM_MEL.n_mels:
            raise ValueError(f"the mel-sfm tower feeds {SFM_MEL.n_mels}x{SFM_MEL.frames}x1 Mel images; "
                             f"its SFM backbone has img_size={b.img_size}, in_chans={b.in_chans}")

    @staticmethod
    def input_shape(backbone: Backbone, num_samples: int) -> tuple[int, ...]:
        return (num_samples, 3)

    @nn.compact
    def __call__(self, waveforms: jax.Array) -> jax.Array:
        if waveforms.ndim != 3 or waveforms.shape[-1] != 3:
            raise ValueError(f"the mel-sfm tower takes waveforms [B, T, 3], got shape "
                             f"{tuple(waveforms.shape)}")
        images = jax.lax.stop_gradient(mel_image(waveforms.astype(jnp.float32)))
        return self.encode_images(images)


class SeisLMTower(nn.Module):
    """SeisLM's wav2vec 2.0 encoder on waveforms [B, T, 3]: mean or flatten of the last hidden states."""

    cfg: TowerConfig
    input_key: ClassVar[str] = "waveform"
    converted_kind: ClassVar[str] = "seislm"
    backbone_type: ClassVar[type] = Wav2Vec2Config

    @staticmethod
    def backbone_preset(preset: str, **overrides: Any) -> Wav2Vec2Config:
        return Wav2Vec2Config.preset(preset, **overrides)

    @staticmethod
    def check(cfg: TowerConfig) -> None:
        if not isinstance(cfg.backbone, Wav2Vec2Config):
            raise ValueError(f"tower {cfg.modality!r} (seislm) needs a Wav2Vec2Config backbone")
        if cfg.pooling in ("cls", "station"):
            raise ValueError(f"tower {cfg.modality!r}: pooling {cfg.pooling!r} needs an image; wav2vec 2.0 "
                             "has no cls token and no station columns: use 'mean' or 'flatten'")

    @staticmethod
    def block(path: tuple[str, ...]) -> int | None:
        if path[:2] != ("wav2vec2", "encoder") or len(path) < 3:
            return None
        match = re.fullmatch(r"layers_(\d+)", path[2])
        return int(match.group(1)) if match else None

    @staticmethod
    def is_final_norm(path: tuple[str, ...], backbone: Backbone) -> bool:
        # Pre-LN (SeisLM) applies encoder.layer_norm after the last layer; post-LN before the first.
        return backbone.do_stable_layer_norm and path[:3] == ("wav2vec2", "encoder", "layer_norm")

    @staticmethod
    def depth(backbone: Backbone) -> int:
        return backbone.num_hidden_layers

    @staticmethod
    def width(backbone: Backbone) -> int:
        return backbone.hidden_size

    @staticmethod
    def input_shape(backbone: Backbone, num_samples: int) -> tuple[int, ...]:
        return (num_samples, backbone.input_channels)

    @staticmethod
    def tokens(backbone: Backbone, num_samples: int) -> int:
        """Tokens that 'flatten' pooling concatenates: the conv encoder's frames."""
        return backbone.frames(num_samples)

    @nn.compact
    def __call__(self, waveforms: jax.Array) -> jax.Array:
        hidden = Wav2Vec2ForPreTraining(self.cfg.backbone, name="encoder").encode(waveforms)
        return pool_tokens(hidden, self.cfg.pooling)


TOWER_KINDS: dict[str, type[nn.Module]] = {"sfm": SFMTower, "mel-sfm": MelSFMTower, "seislm": SeisLMTower}


def pool_tokens(tokens: jax.Array, pooling: str) -> jax.Array:
    """[B, L, D] -> [B, D] (mean) or [B, L·D] (flatten: every token in place).

    The mean forgets where each token sits; flattening keeps it, which is what the towers need
    when the shared physics is a time: the row of a reflector, the delay of a reverberation.
    """
    if pooling == "flatten":
        return tokens.reshape(tokens.shape[0], -1)
    return jnp.mean(tokens, axis=1)


def pooled_width(cfg: TowerConfig, num_samples: int) -> int:
    """Width of a tower's pooled features (num_samples: waveform length, for waveform-fed towers)."""
    kind = TOWER_KINDS[cfg.kind]
    width = kind.width(cfg.backbone)
    if cfg.pooling == "station":
        return width * cfg.backbone.grid_size * len(station_columns(cfg.backbone))
    return width * kind.tokens(cfg.backbone, num_samples) if cfg.pooling == "flatten" else width


# --------------------------------------------------------------------------- joint model


class Head(nn.Module):
    """Projection into the shared space: linear (no bias, as CLIP) or a one-hidden-layer MLP as wide
    as the tower (hidden_dim)."""

    embed_dim: int
    kind: str
    hidden_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        first = "hidden" if self.kind == "mlp" else "proj"
        if not self.is_initializing() and self.has_variable("params", first):
            width = nn.unbox(self.get_variable("params", first))["kernel"].shape[0]  # boxed or not
            if x.shape[-1] != width:
                raise ValueError(f"the head takes {width} pooled features, got {x.shape[-1]}: with "
                                 "'flatten' pooling the input must have the size the model was built for")
        if self.kind == "mlp":
            x = nn.Dense(self.hidden_dim, name="hidden", kernel_init=logical(nn.initializers.lecun_normal(),
                                                                         ("embed", "mlp")),
                         bias_init=logical(nn.initializers.zeros, ("mlp",)))(x)
            x = gelu_exact(x)
        return nn.Dense(self.embed_dim, use_bias=False, name="proj",
                        kernel_init=logical(nn.initializers.lecun_normal(), ("embed", None)))(x)


class Tower(nn.Module):
    """Backbone + pooling + head + L2 normalisation for one modality."""

    cfg: TowerConfig
    embed_dim: int
    head: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = TOWER_KINDS[self.cfg.kind](self.cfg, name="backbone")(x)
        width = TOWER_KINDS[self.cfg.kind].width(self.cfg.backbone)
        return unit_vectors(Head(self.embed_dim, self.head, width, name="head")(pooled.astype(jnp.float32)))


def unit_vectors(z: jax.Array) -> jax.Array:
    """z / ‖z‖ along the last axis: the shared space's L2 normalisation."""
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


class JointEmbedding(nn.Module):
    """{modality: input} -> {modality: unit embeddings [B, embed_dim]} for the modalities given.

    Params: {modality: {backbone: {encoder: ...}, head: ...}, logit_scale, [logit_bias]}.
    """

    cfg: JointConfig

    @nn.compact
    def __call__(self, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        unknown = set(inputs) - set(self.cfg.modalities)
        if unknown:
            raise ValueError(f"inputs for unknown modalities {sorted(unknown)}; "
                             f"this model has {list(self.cfg.modalities)}")
        self.loss_params()
        return {t.modality: Tower(t, self.cfg.embed_dim, self.cfg.head, name=t.modality)(inputs[t.modality])
                for t in self.cfg.towers if t.modality in inputs}

    def loss_params(self) -> tuple[jax.Array, jax.Array | None]:
        """(log t, b): the contrastive losses' learnable log-temperature and bias (None without)."""
        c = self.cfg
        scale = self.param("logit_scale", logical(nn.initializers.constant(c.logit_scale_init), ()), ())
        if c.logit_bias_init is None:
            return scale, None
        return scale, self.param("logit_bias", logical(nn.initializers.constant(c.logit_bias_init), ()), ())


def logit_params(params: Mapping[str, Any]) -> tuple[jax.Array, jax.Array | None]:
    """(log t, b) from a JointEmbedding params tree (b None when the model has no bias)."""
    return params["logit_scale"], params.get("logit_bias")


# --------------------------------------------------------------------------- freezing


def parse_trainable(policy: str | int, depth: int) -> int:
    """Freezing policy -> how many of the last blocks train: 'all' (depth), 'none' (0), 'last:K', or K."""
    if policy == "all":
        return depth
    if policy == "none":
        return 0
    text = str(policy).removeprefix("last:")
    if not text.isdigit():
        raise ValueError(f"freezing policy must be 'all', 'none' or 'last:K', got {policy!r}")
    k = int(text)
    if k > depth:
        raise ValueError(f"freezing policy {policy!r} asks for {k} blocks but the tower has {depth}")
    return k


def param_labels(cfg: JointConfig, params: Any, trainable: Mapping[str, str | int]) -> Any:
    """'decay' / 'no_decay' / 'frozen' per parameter under per-modality freezing policies.

    trainable[modality] is 'all', 'none' (LiT-style: a frozen tower, only its head trains) or
    'last:K' (the last K blocks and the final norm train). Modalities left out train fully.
    Heads and the loss parameters always train; matrices decay, 1-D params and biases do not;
    SFM's fixed sin-cos position tables are always frozen.
    """
    unknown = set(trainable) - set(cfg.modalities)
    if unknown:
        raise ValueError(f"freezing policies for unknown modalities {sorted(unknown)}; "
                         f"this model has {list(cfg.modalities)}")
    keep = {}
    for t in cfg.towers:
        kind = TOWER_KINDS[t.kind]
        depth = kind.depth(t.backbone)
        keep[t.modality] = (kind, t.backbone, depth, parse_trainable(trainable.get(t.modality, "all"), depth))

    def label(path: tuple[str, ...], leaf: jax.Array) -> str:
        default = "no_decay" if leaf.ndim <= 1 or path[-1] == "bias" else "decay"
        if path[0] not in keep or path[1] != "backbone":
            return default
        kind, backbone, depth, k = keep[path[0]]
        inner = path[3:]  # {modality}/backbone/encoder/...
        if path[-1] == "pos_embed" and not getattr(backbone, "learned_pos_embed", True):
            return "frozen"  # SFM's fixed sin-cos table
        if k == depth:
            return default
        block = kind.block(inner)
        trains = (block is not None and block >= depth - k) or (k > 0 and kind.is_final_norm(inner, backbone))
        return default if trains else "frozen"

    return path_aware_map(label, params)


# --------------------------------------------------------------------------- released weights


def tower_from_converted(modality: str, kind: str, converted_kind: str, converted_config: Mapping[str, Any],
                         pooling: str = "mean", **overrides: Any) -> TowerConfig:
    """The TowerConfig of a tower that starts from `seisfuse convert` output (its config.json)."""
    tower = TOWER_KINDS.get(kind)
    if tower is None:
        raise ValueError(f"unknown tower kind {kind!r}; choose from {sorted(TOWER_KINDS)}")
    if converted_kind != tower.converted_kind:
        raise ValueError(f"tower {modality!r} ({kind}) needs converted {tower.converted_kind} weights, "
                         f"got {converted_kind!r}")
    values = {**dict(converted_config), **overrides}
    if tower.backbone_type is MAEConfig:
        values["decoder"] = False  # the joint model uses the encoder only
    return TowerConfig(modality, kind, tower.backbone_type.from_dict(values), pooling)


def load_tower_weights(cfg: JointConfig, params: Mapping[str, Any], modality: str, converted_kind: str,
                       converted: Mapping[str, Any]) -> dict[str, Any]:
    """params with `modality`'s encoder replaced by converted weights (decoder, quantizer and other
    pretraining-only entries of the converted tree are not used). Raises naming missing keys and
    shape mismatches."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    tower = cfg.tower(modality)
    expected_kind = TOWER_KINDS[tower.kind].converted_kind
    if converted_kind != expected_kind:
        raise ValueError(f"tower {modality!r} needs converted {expected_kind} weights, "
                         f"got {converted_kind!r}")
    encoder = flatten_dict(params[modality]["backbone"]["encoder"])
    source = flatten_dict(converted)
    missing = sorted("/".join(k) for k in encoder if k not in source)
    if missing:
        raise ValueError(f"converted weights for {modality!r} lack {len(missing)} encoder parameters: "
                         f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")
    mismatched = [f"{'/'.join(k)}: {tuple(source[k].shape)} vs {tuple(v.shape)}"
                  for k, v in encoder.items() if tuple(source[k].shape) != tuple(v.shape)]
    if mismatched:
        raise ValueError(f"converted weights for {modality!r} do not fit the tower: {mismatched[:8]}")
    loaded = unflatten_dict({k: jnp.asarray(source[k], v.dtype) for k, v in encoder.items()})
    out = dict(params)
    out[modality] = {**params[modality], "backbone": {**params[modality]["backbone"], "encoder": loaded}}
    return out
