"""SFM's fine-tuned downstream models in plain torch.nn, with the original state-dict key names.

Reference for parity tests only (no timm): the computations of SFM-Finetune's
models_Segmentation.VisionTransformer (SETR MLA head on blocks k·depth//4, no final norm) and
models_Regression.VisionTransformer (final norm, DecoderCup with the image skip), eval forward,
drop_path 0. The trunk reuses the MAE reference's blocks (timm 0.3.2 layout).
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seisfuse.models.mae import MAEConfig
from seisfuse.testing.mae_torch import Block, PatchEmbed, sincos_table


def conv_bn_relu(inp: int, out: int, kernel: int = 3) -> nn.Sequential:
    """Keys .0 (conv, no bias) and .1 (BatchNorm2d), as the originals' Conv2dReLU."""
    return nn.Sequential(nn.Conv2d(inp, out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU())


class Trunk(nn.Module):
    """timm VisionTransformer's parameters in state_dict order: cls_token, pos_embed, patch_embed,
    blocks, norm, head (the classifier, unused by both downstream forwards)."""

    def __init__(self, cfg: MAEConfig, num_classes: int):
        super().__init__()
        d = cfg.embed_dim
        self.cfg = cfg
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, d))
        table = torch.from_numpy(sincos_table(d, cfg.grid_size)).float()[None]
        self.pos_embed = nn.Parameter(table + 0.02 * torch.randn_like(table))  # learned in fine-tuning
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, d)
        self.blocks = nn.ModuleList(
            [Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.layer_norm_eps) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(d, num_classes)

    def tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Token sequences (cls first) after every block."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


def to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """[B, 1+L, D] -> [B, D, h, w] without the cls token (the originals' permute + view)."""
    b, length, d = tokens[:, 1:].shape
    side = int(np.sqrt(length))
    return tokens[:, 1:].permute(0, 2, 1).contiguous().view(b, d, side, side)


class MLAHeads(nn.Module):
    def __init__(self, width: int, channels: int):
        super().__init__()
        for k in range(2, 6):
            layers = conv_bn_relu(width, channels)
            layers.extend(conv_bn_relu(channels, channels))
            setattr(self, f"head{k}", layers)  # keys head{k}.0/.1 and head{k}.3/.4

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        ups = []
        for k, grid in zip(range(2, 6), grids, strict=True):
            y = getattr(self, f"head{k}")(grid)
            ups.append(F.interpolate(y, (4 * grid.shape[-2], 4 * grid.shape[-1]), mode="bilinear",
                                     align_corners=True))
        return torch.cat(ups, dim=1)


class MLADecoder(nn.Module):
    def __init__(self, width: int, channels: int, num_classes: int):
        super().__init__()
        self.mlahead = MLAHeads(width, channels)
        self.cls = nn.Conv2d(4 * channels, num_classes, 3, padding=1)

    def forward(self, grids: list[torch.Tensor]) -> torch.Tensor:
        return self.cls(self.mlahead(grids))


class SegmentationRef(Trunk):
    """models_Segmentation.VisionTransformer: taps after blocks k·(depth//4), no final norm."""

    def __init__(self, cfg: MAEConfig, num_classes: int, head_channels: int = 128):
        super().__init__(cfg, num_classes)
        self.decoder = MLADecoder(cfg.embed_dim, head_channels, num_classes)
        self.segmentation_head = nn.Sequential(nn.Conv2d(16, num_classes, 3, padding=1), nn.Identity())

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits before the final resize [B, classes, 4h, 4w], the output [B, classes, 16h, 16w])."""
        outputs = self.tokens(x)
        step = len(self.blocks) // 4
        small = self.decoder([to_grid(outputs[step * k - 1]) for k in range(1, 5)])
        side = 16 * self.cfg.grid_size
        return small, F.interpolate(small, size=(side, side), mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(x)[1]


class CupBlock(nn.Module):
    def __init__(self, inp: int, out: int):
        super().__init__()
        self.conv1 = conv_bn_relu(inp, out)
        self.conv2 = conv_bn_relu(out, out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class Cup(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv_more = conv_bn_relu(1, 32)
        widths = [(width, 256), (256, 128), (128, 64), (64 + 32, 64)]
        self.blocks = nn.ModuleList([CupBlock(i, o) for i, o in widths])

    def forward(self, grid: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output; the last is the decoder's."""
        skip = self.conv_more(image)
        outputs = []
        for i, block in enumerate(self.blocks):
            grid = block(grid, skip if i == 3 else None)
            outputs.append(grid)
        return outputs


class RegressionRef(Trunk):
    """models_Regression.VisionTransformer with Interpolation=False: final norm, DecoderCup, 1×1 conv."""

    def __init__(self, cfg: MAEConfig, out_channels: int = 1):
        super().__init__(cfg, out_channels)
        self.decoder = Cup(cfg.embed_dim)
        self.segmentation_head = nn.Sequential(nn.Conv2d(64, out_channels, 1), nn.Identity())

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the third decoder block's output, before the last ×2 upsampling; the output)."""
        blocks = self.decoder(to_grid(self.norm(self.tokens(x)[-1])), x)
        return blocks[2], self.segmentation_head(blocks[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(x)[1]


def perturb_(model: nn.Module, seed: int = 0, train_steps: int = 3) -> None:
    """Move every bias, LayerNorm and BatchNorm affine weight off its init, then run train-mode
    forwards so the BatchNorm running statistics leave 0/1; ends in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 or name.endswith("bias"):
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
        model.train()
        size, chans = model.cfg.img_size, model.cfg.in_chans
        for _ in range(train_steps):
            model(torch.randn(2, chans, size, size, generator=gen))
    model.eval()


def save_like_sfm_finetune(model: nn.Module, path: str | pathlib.Path, factory: str, task: str,
                           state: dict[str, torch.Tensor] | None = None) -> None:
    """torch.save as SFM-Finetune's misc.save_model: model, optimizer, epoch, scaler, args Namespace."""
    nb_classes = model.head.out_features
    args = argparse.Namespace(model=factory, task=task, input_size=model.cfg.img_size, nb_classes=nb_classes,
                              drop_path=0.1, output_dir=pathlib.PosixPath("/tmp/sfm_finetune"), blr=1e-3)
    torch.save({"model": model.state_dict() if state is None else state,
                "optimizer": {"state": {}, "param_groups": []}, "epoch": 99,
                "scaler": {"scale": 65536.0}, "args": args}, path)
