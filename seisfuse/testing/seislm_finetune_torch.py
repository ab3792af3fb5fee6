"""Plain-PyTorch references of SeisLM's downstream models, for parity tests of seisfuse.models.seislm_heads.

The phase picker (`MultiDimWav2Vec2ForFrameClassification`) and the event classifier
(`Wav2Vec2ForSequenceClassification`) on the trunk of seisfuse/testing/wav2vec2_torch.py, written with
the original module and attribute names so `state_dict()` keys match the released fine-tuned
checkpoints (`double_conv.double_conv.1.running_mean`, `classifier.weight`, `head.4.weight`,
`layer_weights`, `lns.0.weight`, ...). Checkpoints are saved as Lightning does, with the pickled
ml_collections ConfigDicts under 'hyper_parameters'. Only torch.nn.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seisfuse.testing import wav2vec2_torch as trunk
from seisfuse.testing.wav2vec2_torch import RefConfig


@dataclasses.dataclass
class HeadConfig:
    """The downstream fields of SeisLM's model_config (the trunk's come from RefConfig)."""

    task: str = "pick"  # "pick" (frame classification) or "classify" (sequence classification)
    num_labels: int = 3
    num_classes: int = 4
    classifier_proj_size: int = 256
    use_weighted_layer_sum: bool = False
    head_dropout_rate: float = 0.0


def hidden_states(model: trunk.Wav2Vec2Model, input_values: torch.Tensor) -> list[torch.Tensor]:
    """HuggingFace's `output_hidden_states`: the input of every encoder layer, then the output.

    Pre-LN (SeisLM): [embedding + pos conv, layers 0..N−2, final LayerNorm]; post-LN:
    [LayerNorm(embedding + pos conv), layers 0..N−1].
    """
    features = model.feature_extractor(input_values).transpose(1, 2)
    x, _ = model.feature_projection(features)
    encoder = model.encoder
    x = x + encoder.pos_conv_embed(x)
    if not encoder.stable:
        x = encoder.layer_norm(x)
    states = []
    for layer in encoder.layers:
        states.append(x)
        x = layer(x, None)
    states.append(encoder.layer_norm(x) if encoder.stable else x)
    return states


def vector_cross_entropy(y_pred: torch.Tensor, y_true: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The picker's loss on [B, classes, T] (or [B, classes]) probabilities: mean over samples, sum
    over classes, mean over the batch, negated."""
    h = y_true * torch.log(y_pred + eps)
    h = h.mean(-1).sum(-1) if y_pred.ndim == 3 else h.sum(-1)
    return -h.mean()


class DoubleConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout_rate: float, padding: str,
                 strides: tuple[int, int]):
        super().__init__()
        kwargs = {"kernel_size": 3, "out_channels": out_channels, "padding": padding, "bias": False}
        self.double_conv = nn.Sequential(
            nn.Conv1d(in_channels=in_channels, stride=strides[0], **kwargs),
            nn.BatchNorm1d(out_channels), nn.GELU(), nn.Dropout(dropout_rate),
            nn.Conv1d(in_channels=out_channels, stride=strides[1], **kwargs),
            nn.BatchNorm1d(out_channels), nn.GELU(), nn.Dropout(dropout_rate),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        return self.double_conv(x)


class Downstream(nn.Module):
    """The shared base: trunk, optional weighted layer sum (`layer_weights`, `lns`)."""

    def __init__(self, cfg: RefConfig, head: HeadConfig):
        super().__init__()
        self.cfg, self.head_cfg = cfg, head
        self.wav2vec2 = trunk.Wav2Vec2Model(cfg)
        if head.use_weighted_layer_sum:
            count = cfg.num_hidden_layers + 1
            self.layer_weights = nn.Parameter(torch.ones(count) / count)
            self.lns = nn.ModuleList([nn.LayerNorm(cfg.hidden_size) for _ in range(count)])

    def features(self, input_values: torch.Tensor) -> torch.Tensor:  # [B, L, H]
        if not self.head_cfg.use_weighted_layer_sum:
            return self.wav2vec2(input_values)[0]
        states = [ln(s) for ln, s in zip(self.lns, hidden_states(self.wav2vec2, input_values), strict=True)]
        weights = F.softmax(self.layer_weights, dim=-1)
        return (torch.stack(states, dim=1) * weights.view(-1, 1, 1)).sum(dim=1)


class FrameClassifier(Downstream):
    """The phase picker: [B, C, T] -> softmax probabilities [B, num_labels, T]."""

    def __init__(self, cfg: RefConfig, head: HeadConfig):
        super().__init__(cfg, head)
        width = cfg.hidden_size + cfg.input_dim
        self.classifier = nn.Linear(width, head.num_labels)
        self.hidden_dropout = nn.Dropout(head.head_dropout_rate)
        self.double_conv = DoubleConvBlock(width, width, head.head_dropout_rate, "same", (1, 1))
        del self.wav2vec2.masked_spec_embed  # as the released picker (no SpecAugment time masking)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        hidden = self.features(input_values)
        samples = input_values.shape[-1]
        if hidden.shape[1] != samples:
            hidden = F.interpolate(hidden.transpose(1, 2), size=samples, mode="linear",
                                   align_corners=False).transpose(1, 2)
        hidden = torch.cat([hidden, input_values.transpose(1, 2)], dim=-1)
        hidden = self.double_conv(hidden.transpose(1, 2)).transpose(1, 2)
        logits = self.classifier(self.hidden_dropout(hidden)).transpose(1, 2)
        return F.softmax(logits, dim=1)


class Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class MeanOverTime(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=-1)


class SequenceClassifier(Downstream):
    """The event classifier: [B, C, T] -> logits [B, num_classes] (`head` Sequential indices 0..4)."""

    def __init__(self, cfg: RefConfig, head: HeadConfig):
        super().__init__(cfg, head)
        h, p, rate = cfg.hidden_size, head.classifier_proj_size, head.head_dropout_rate
        self.head = nn.Sequential(
            Transpose(),
            DoubleConvBlock(h, h, rate, "valid", (2, 2)),
            DoubleConvBlock(h, p, rate, "valid", (2, 2)),
            MeanOverTime(),
            nn.Linear(p, head.num_classes),
        )

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_values))


def perturb_(model: Downstream, seed: int = 0) -> None:
    """Move every norm scale, bias, BatchNorm running statistic and the layer weights off their
    initial values, so a swapped or ignored tensor cannot pass a parity test."""
    trunk.perturb_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.weight.mul_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
                module.running_mean.add_(0.3 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.mul_(torch.exp(0.5 * torch.randn(module.running_var.shape, generator=gen)))
                module.num_batches_tracked.fill_(17)
        if model.head_cfg.use_weighted_layer_sum:
            model.layer_weights.add_(torch.randn(model.layer_weights.shape, generator=gen))


def build(cfg: RefConfig, head: HeadConfig, seed: int = 0) -> Downstream:
    """A random downstream reference, everything perturbed, eval mode."""
    torch.manual_seed(seed)
    model = (FrameClassifier if head.task == "pick" else SequenceClassifier)(cfg, head)
    perturb_(model, seed)
    return model.eval()


def model_config(model: Downstream) -> Any:
    """The ml_collections ConfigDict the original saves: the pretrained trunk's config merged with
    the fine-tuning arguments."""
    import ml_collections

    values = dataclasses.asdict(model.cfg)
    for name in ("conv_dim", "conv_kernel", "conv_stride"):
        values[name] = list(values[name])
    head = model.head_cfg
    values.update(use_weighted_layer_sum=head.use_weighted_layer_sum,
                  head_dropout_rate=head.head_dropout_rate, apply_spec_augment=True,
                  mask_feature_prob=0.2, layerdrop=0.0, freeze_feature_encoder=True,
                  freeze_base_model=False, pretrained_ckpt_path="/results/pretrained/last.ckpt")
    if head.task == "pick":
        values.update(num_labels=head.num_labels, sample_boundaries=[None, None], sigma=20,
                      mask_time_prob=0.0)
    else:
        values.update(num_classes=head.num_classes, classifier_proj_size=head.classifier_proj_size)
    return ml_collections.ConfigDict(values)


def lightning_checkpoint(model: Downstream) -> dict[str, Any]:
    """What Lightning saves for the fine-tuning modules: state_dict under 'model.', the
    hyper_parameters (model_config, training_config, load_pretrained), optimizer states."""
    import ml_collections

    training = ml_collections.ConfigDict({"optimizer": "adamw", "max_train_steps": 10,
                                          "warmup_frac_step": 0.1,
                                          "optimizer_args": {"lr": 5e-4, "weight_decay": 0.1}})
    state = {"model." + k: v.detach().clone() for k, v in model.state_dict().items()}
    moments = {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(p),
                   "exp_avg_sq": torch.zeros_like(p)} for i, p in enumerate(model.parameters())}
    return {
        "epoch": 7, "global_step": 420, "pytorch-lightning_version": "2.4.0",
        "state_dict": state, "loops": {}, "callbacks": {},
        "optimizer_states": [{"state": moments, "param_groups": [{"lr": 5e-4, "params": list(moments)}]}],
        "lr_schedulers": [{"last_epoch": 420}], "hparams_name": "kwargs",
        "hyper_parameters": {"model_config": model_config(model), "training_config": training,
                             "load_pretrained": True},
    }


def save_lightning_checkpoint(model: Downstream, path: str | Path) -> None:
    torch.save(lightning_checkpoint(model), path)
