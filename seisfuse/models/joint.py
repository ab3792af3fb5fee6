"""Joint embedding: one tower per modality, projected into one shared L2-normalised space.

A `JointConfig` names its modalities and the tower that encodes each ("sfm": SFM's ViT encoder
on seismic images; "seislm": SeisLM's wav2vec 2.0 encoder on 3-C waveforms; "mel-sfm": a second
SFM encoder on the waveform's Mel-spectrogram image, the spectrogram-as-image approach). Each
tower pools its tokens (cls, mean or flatten), a per-modality head projects to `embed_dim`, and the result
is L2-normalised. The model returns {modality: embeddings [B, embed_dim]} for the modalities it
is given, so a third modality (tabular metadata, text) is one more `TowerKind` in `TOWER_KINDS` and
in the config: the losses take pairs of embeddings and the loop never sees modalities.

The learnable temperature and bias of the contrastive losses are parameters here
(`logit_scale`, `logit_bias`), as in big_vision's two-tower models, so one params tree holds
everything a checkpoint needs. Freezing policies become optimizer labels
(`seisfuse.train.optim.joint_param_labels`); released weights load through `seisfuse.convert.towers`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

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
        kind = tower_kind(self.kind)
        if not isinstance(self.backbone, kind.config_type):
            raise ValueError(f"tower {self.modality!r} ({self.kind}) needs a {kind.config_type.__name__} "
                             f"backbone, got {type(self.backbone).__name__}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling not in kind.poolings:
            raise ValueError(f"tower {self.modality!r} ({self.kind}): pooling {self.pooling!r} "
                             f"{kind.pooling_note}: use {' or '.join(map(repr, kind.poolings))}")
        kind.check(self.backbone)

    @property
    def input_key(self) -> str:
        """The raw-batch key this tower reads ('image', 'waveform', ...)."""
        return TOWER_KINDS[self.kind].input_key

    @classmethod
    def from_preset(cls, modality: str, kind: str, preset: str, pooling: str = "mean",
                    **overrides: Any) -> TowerConfig:
        """A scratch tower from a named backbone preset (decoder-free for SFM)."""
        tower = tower_kind(kind)
        return cls(modality, kind, tower.config_type.preset(preset, **{**tower.encoder_only, **overrides}),
                   pooling)

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "kind": self.kind, "pooling": self.pooling,
                "backbone": self.backbone.to_dict()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TowerConfig:
        backbone = tower_kind(values["kind"]).config_type.from_dict(dict(values["backbone"]))
        return cls(values["modality"], values["kind"], backbone, values.get("pooling", "mean"))


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

    @nn.compact
    def __call__(self, waveforms: jax.Array) -> jax.Array:
        hidden = Wav2Vec2ForPreTraining(self.cfg.backbone, name="encoder").encode(waveforms)
        return pool_tokens(hidden, self.cfg.pooling)


# --------------------------------------------------------------------------- tower kinds


@dataclasses.dataclass(frozen=True)
class TowerKind:
    """How to build, check and load one kind of tower (the values of TOWER_KINDS).

    module: the backbone module (TowerConfig -> pooled features); config_type: its backbone config;
    encoder_only: config values that drop pretraining-only parts (SFM's decoder); converted_kind:
    the `seisfuse convert` model whose encoder weights it loads. input_key / input_shape: the raw
    batch key it reads and one example's shape (num_samples: waveform length). poolings: those it
    allows (pooling_note says why not the others); check: refuses a backbone it cannot feed.
    depth / width / tokens: blocks, token width, tokens that 'flatten' concatenates. block: the
    transformer block index of an encoder param path (None outside blocks); is_final_norm: the
    norm after the last block, which trains with a 'last:K' policy.
    """

    module: type[nn.Module]
    config_type: type[MAEConfig] | type[Wav2Vec2Config]
    converted_kind: str
    input_key: str
    input_shape: Callable[[Any, int], tuple[int, ...]]
    depth: Callable[[Any], int]
    width: Callable[[Any], int]
    tokens: Callable[[Any, int], int]
    block: Callable[[tuple[str, ...]], int | None]
    is_final_norm: Callable[[tuple[str, ...], Any], bool]
    encoder_only: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    poolings: tuple[str, ...] = POOLINGS
    pooling_note: str = ""
    check: Callable[[Any], None] = lambda backbone: None


def _vit_block(path: tuple[str, ...]) -> int | None:
    match = re.fullmatch(r"blocks_(\d+)", path[0])
    return int(match.group(1)) if match else None


def _wav2vec2_block(path: tuple[str, ...]) -> int | None:
    if path[:2] != ("wav2vec2", "encoder") or len(path) < 3:
        return None
    match = re.fullmatch(r"layers_(\d+)", path[2])
    return int(match.group(1)) if match else None


def _check_mel_image(backbone: MAEConfig) -> None:
    if (backbone.img_size, backbone.in_chans) != (SFM_MEL.n_mels, 1) or SFM_MEL.frames != SFM_MEL.n_mels:
        raise ValueError(f"the mel-sfm tower feeds {SFM_MEL.n_mels}x{SFM_MEL.frames}x1 Mel images; its SFM "
                         f"backbone has img_size={backbone.img_size}, in_chans={backbone.in_chans}")


SFM_KIND = TowerKind(
    module=SFMTower, config_type=MAEConfig, converted_kind="sfm", input_key="image",
    input_shape=lambda b, num_samples: (b.img_size, b.img_size, b.in_chans),
    depth=lambda b: b.depth, width=lambda b: b.embed_dim,
    tokens=lambda b, num_samples: b.num_patches,  # the image's patches
    block=_vit_block, is_final_norm=lambda path, b: path[0] == "norm",
    encoder_only={"decoder": False})

TOWER_KINDS: dict[str, TowerKind] = {
    "sfm": SFM_KIND,
    "mel-sfm": dataclasses.replace(
        SFM_KIND, module=MelSFMTower, input_key="waveform",
        input_shape=lambda b, num_samples: (num_samples, 3),
        poolings=("cls", "mean", "flatten"),
        pooling_note="reads an image's centre traces; a Mel image has no station", check=_check_mel_image),
    "seislm": TowerKind(
        module=SeisLMTower, config_type=Wav2Vec2Config, converted_kind="seislm", input_key="waveform",
        input_shape=lambda b, num_samples: (num_samples, b.input_channels),
        depth=lambda b: b.num_hidden_layers, width=lambda b: b.hidden_size,
        tokens=lambda b, num_samples: b.frames(num_samples),  # the conv encoder's frames
        block=_wav2vec2_block,
        # Pre-LN (SeisLM) applies encoder.layer_norm after the last layer; post-LN before the first.
        is_final_norm=lambda path, b: (b.do_stable_layer_norm
                                       and path[:3] == ("wav2vec2", "encoder", "layer_norm")),
        poolings=("mean", "flatten"),
        pooling_note="needs an image; wav2vec 2.0 has no cls token and no station columns"),
}


def tower_kind(name: str) -> TowerKind:
    """TOWER_KINDS[name], or a ValueError naming the kinds there are."""
    if name not in TOWER_KINDS:
        raise ValueError(f"unknown tower kind {name!r}; choose from {sorted(TOWER_KINDS)}")
    return TOWER_KINDS[name]


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
        kind = TOWER_KINDS[self.cfg.kind]
        pooled = kind.module(self.cfg, name="backbone")(x)
        width = kind.width(self.cfg.backbone)
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
