"""Plain-PyTorch reference of SeisLM's `MultiDimWav2Vec2ForPreTraining`, for parity tests and benchmarks.

Written from the facts in docs/specs.md with the original module and attribute names, so
`state_dict()` keys match the released checkpoints (`wav2vec2.encoder.layers.0.attention.q_proj.weight`,
the weight-normed `pos_conv_embed.conv.parametrizations.weight.original0/1`, ...). It follows the
original computation step by step (including the [B·L, G·V, d] code-vector product and the gather
of negatives), so it is also the PyTorch side of experiments/benchmarks/bench_seislm.py. Only torch.nn.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class RefConfig:
    """The subset of SeisLM's ml_collections model config that the model reads."""

    input_dim: int = 3
    conv_dim: tuple[int, ...] = (256, 256)
    conv_kernel: tuple[int, ...] = (3, 3)
    conv_stride: tuple[int, ...] = (2, 2)
    conv_bias: bool = True
    feat_extract_norm: str = "layer"
    hidden_size: int = 240
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 320
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    scale_logits_in_quantization: bool = True
    num_negatives: int = 100
    contrastive_logits_temperature: float = 0.1
    diversity_loss_weight: float = 0.1
    mask_time_prob: float = 0.65
    mask_time_length: int = 10
    mask_time_min_masks: int = 2


def ref_config(flax_cfg: Any) -> RefConfig:
    """RefConfig from a seisfuse Wav2Vec2Config (same field meanings, SeisLM's names)."""
    values = {f.name: getattr(flax_cfg, f.name) for f in dataclasses.fields(RefConfig)
              if hasattr(flax_cfg, f.name)}
    values["input_dim"] = flax_cfg.input_channels
    values["scale_logits_in_quantization"] = flax_cfg.scale_quantizer_logits
    return RefConfig(**values)


def frames_after_conv(lengths: torch.Tensor, cfg: RefConfig) -> torch.Tensor:
    for k, s in zip(cfg.conv_kernel, cfg.conv_stride, strict=True):
        lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
    return lengths


class ConvLayer(nn.Module):
    def __init__(self, cfg: RefConfig, i: int):
        super().__init__()
        c_in = cfg.conv_dim[i - 1] if i else cfg.input_dim
        c_out = cfg.conv_dim[i]
        self.conv = nn.Conv1d(c_in, c_out, cfg.conv_kernel[i], stride=cfg.conv_stride[i],
                              bias=cfg.conv_bias)
        self.kind = cfg.feat_extract_norm if (cfg.feat_extract_norm == "layer" or i == 0) else "none"
        if self.kind == "layer":
            self.layer_norm = nn.LayerNorm(c_out)
        elif self.kind == "group":
            self.layer_norm = nn.GroupNorm(c_out, c_out, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        x = self.conv(x)
        if self.kind == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        elif self.kind == "group":
            x = self.layer_norm(x)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.conv_layers = nn.ModuleList([ConvLayer(cfg, i) for i in range(len(cfg.conv_dim))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.layer_norm(x)
        return self.projection(normed), normed


class PositionalConvEmbedding(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2,
                         groups=cfg.num_conv_pos_embedding_groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove = 1 if k % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, H]
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, :-self.remove]
        return F.gelu(y).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        h = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj = nn.Linear(h, h), nn.Linear(h, h)
        self.v_proj, self.out_proj = nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, h = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                           split(self.v_proj(x)), attn_mask=additive_mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, h))


class FeedForward(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.stable = cfg.do_stable_layer_norm
        self.attention = Attention(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor | None) -> torch.Tensor:
        if self.stable:
            x = x + self.attention(self.layer_norm(x), additive_mask)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, additive_mask))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.stable = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        additive = None
        if frame_mask is not None:
            x = x.masked_fill(~frame_mask[..., None], 0.0)
            additive = (1.0 - frame_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        x = x + self.pos_conv_embed(x)
        if not self.stable:
            x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x, additive)
        return self.layer_norm(x) if self.stable else x


class Wav2Vec2Model(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.cfg = cfg
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.masked_spec_embed = nn.Parameter(torch.empty(cfg.hidden_size).uniform_())
        self.encoder = Encoder(cfg)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                mask_time_indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.feature_extractor(input_values).transpose(1, 2)
        frame_mask = None
        if attention_mask is not None:  # sample-level (or, as the released collator did, frame-level)
            lengths = frames_after_conv(attention_mask.sum(-1).long(), self.cfg)
            frame_mask = torch.arange(features.shape[1])[None, :] < lengths[:, None]
        hidden, extract_features = self.feature_projection(features)
        if mask_time_indices is not None:
            hidden = hidden.clone()
            hidden[mask_time_indices] = self.masked_spec_embed.to(hidden.dtype)
        return self.encoder(hidden, frame_mask), extract_features


class GumbelVectorQuantizer(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.groups, self.per_group = cfg.num_codevector_groups, cfg.num_codevectors_per_group
        self.scale = cfg.scale_logits_in_quantization
        self.codevectors = nn.Parameter(torch.empty(1, self.groups * self.per_group,
                                                    cfg.codevector_dim // self.groups).uniform_())
        self.weight_proj = nn.Linear(cfg.conv_dim[-1], self.groups * self.per_group)
        self.temperature = 2.0

    @staticmethod
    def perplexity(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.flatten()[:, None, None].expand(probs.shape)
        mean = torch.where(m, probs, torch.zeros_like(probs)).sum(0) / mask.sum()
        return torch.exp(-torch.sum(mean * torch.log(mean + 1e-7), dim=-1)).sum()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        logits = self.weight_proj(x)
        if self.scale:
            logits = logits / math.sqrt(c)
        logits = logits.view(b * n, self.groups, self.per_group)
        if self.training:
            probs = F.gumbel_softmax(logits.float(), tau=self.temperature, hard=True).type_as(logits)
            perplexity = self.perplexity(torch.softmax(logits.float(), dim=-1), mask)
        else:
            idx = logits.argmax(dim=-1, keepdim=True)
            probs = logits.new_zeros(logits.shape).scatter_(-1, idx, 1.0)
            perplexity = self.perplexity(probs, mask)
        probs = probs.view(b * n, -1)
        per_group = probs.unsqueeze(-1) * self.codevectors  # [B·L, G·V, d], as the original
        vectors = per_group.view(b * n, self.groups, self.per_group, -1).sum(-2).view(b, n, -1)
        return vectors, perplexity


class Wav2Vec2ForPreTraining(nn.Module):
    """Outputs a dict with the same names as seisfuse's Flax model."""

    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.cfg = cfg
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.quantizer = GumbelVectorQuantizer(cfg)
        self.project_hid = nn.Linear(cfg.hidden_size, cfg.proj_codevector_dim)
        self.project_q = nn.Linear(cfg.codevector_dim, cfg.proj_codevector_dim)

    def forward(self, input_values: torch.Tensor, mask_time_indices: torch.Tensor,
                sampled_negative_indices: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        mask = mask_time_indices.bool()
        hidden, extract_features = self.wav2vec2(input_values, attention_mask, mask)
        projected = self.project_hid(hidden)
        quantized, perplexity = self.quantizer(extract_features, mask)
        quantized = self.project_q(quantized)
        b, n, d = quantized.shape
        negatives = quantized.reshape(-1, d)[sampled_negative_indices.long().view(-1)]
        negatives = negatives.view(b, n, -1, d).permute(2, 0, 1, 3)
        targets = torch.cat([quantized[None], negatives], dim=0)
        logits = torch.cosine_similarity(projected.float(), targets.float(), dim=-1)
        logits = logits / cfg.contrastive_logits_temperature
        neg_is_pos = (quantized == negatives).all(-1)
        if neg_is_pos.any():
            logits[1:][neg_is_pos] = float("-inf")
        logits = logits.transpose(0, 2).reshape(-1, logits.size(0))
        target = ((1 - mask.long()) * -100).transpose(0, 1).flatten()
        contrastive = F.cross_entropy(logits.float(), target, reduction="sum")
        num_codevectors = cfg.num_codevectors_per_group * cfg.num_codevector_groups
        diversity = (num_codevectors - perplexity) / num_codevectors * mask.sum()
        return {"loss": contrastive + cfg.diversity_loss_weight * diversity,
                "contrastive_loss": contrastive, "diversity_loss": diversity,
                "codevector_perplexity": perplexity, "projected_states": projected,
                "projected_quantized_states": quantized, "last_hidden_state": hidden,
                "logits": logits.view(n, b, -1).transpose(0, 1)}


def perturb_(model: nn.Module, seed: int = 0) -> None:
    """Move every LayerNorm/GroupNorm scale and every bias away from 1/0, so swaps cannot pass."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            elif leaf == "weight" and isinstance(_owner(model, name), (nn.LayerNorm, nn.GroupNorm)):
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=gen))
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model


def build(cfg: RefConfig, seed: int = 0) -> Wav2Vec2ForPreTraining:
    """Random SeisLM reference, LayerNorms/biases perturbed, eval mode."""
    torch.manual_seed(seed)
    model = Wav2Vec2ForPreTraining(cfg)
    perturb_(model, seed)
    return model.eval()


def lightning_checkpoint(model: Wav2Vec2ForPreTraining, *, extra: dict[str, torch.Tensor] | None = None,
                         weight_norm_legacy: bool = False) -> dict[str, Any]:
    """What Lightning saves for SeisLM's LitMultiDimWav2Vec2: state_dict under 'model.', the
    pickled ml_collections ConfigDict, optimizer states and bookkeeping."""
    import ml_collections

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if weight_norm_legacy:
        state = legacy_weight_norm_names(state)
    state.update(extra or {})
    config = ml_collections.ConfigDict()
    model_config = dataclasses.asdict(model.cfg)
    model_config["conv_dim"] = list(model_config["conv_dim"])
    model_config["conv_kernel"] = list(model_config["conv_kernel"])
    model_config["conv_stride"] = list(model_config["conv_stride"])
    config.model_config = ml_collections.ConfigDict(model_config)
    config.training_config = ml_collections.ConfigDict({"learning_rate": 5e-4, "max_train_steps": 10})
    exp_avg = {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(v),
                   "exp_avg_sq": torch.zeros_like(v)} for i, v in enumerate(model.parameters())}
    return {
        "epoch": 3, "global_step": 1234, "pytorch-lightning_version": "2.4.0",
        "state_dict": {"model." + k: v for k, v in state.items()},
        "loops": {}, "callbacks": {},
        "optimizer_states": [{"state": exp_avg, "param_groups": [{"lr": 5e-4, "params": list(exp_avg)}]}],
        "lr_schedulers": [{"last_epoch": 1234}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"config": config},
    }


def legacy_weight_norm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename parametrizations.weight.original0/1 to the pre-2.1 weight_g/weight_v keys."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        renamed[key] = value
    return renamed


def save_lightning_checkpoint(model: Wav2Vec2ForPreTraining, path: str | Path, **kwargs: Any) -> None:
    torch.save(lightning_checkpoint(model, **kwargs), path)
