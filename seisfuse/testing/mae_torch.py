"""SFM's masked autoencoder in plain torch.nn, with the original state-dict key names.

Reference for parity tests and benchmarks only (no timm): the same computations as SFM's
models_mae.py with timm 0.3.2 blocks, written from the facts in docs/specs.md.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch
from torch import nn

from seisfuse.models.mae import MAEConfig


def sincos_table(dim: int, grid: int) -> np.ndarray:
    """The original get_2d_sincos_pos_embed(dim, grid, cls_token=True), in float64."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one_d(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_w, grid_h = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([one_d(grid_w), one_d(grid_h)], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        d, dd, grid = cfg.embed_dim, cfg.decoder_embed_dim, cfg.grid_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, d), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.layer_norm_eps) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        if cfg.decoder:
            self.decoder_embed = nn.Linear(d, dd)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dd), requires_grad=False)
            self.decoder_blocks = nn.ModuleList(
                [Block(dd, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.layer_norm_eps)
                 for _ in range(cfg.decoder_depth)])
            self.decoder_norm = nn.LayerNorm(dd, eps=cfg.layer_norm_eps)
            self.decoder_pred = nn.Linear(dd, cfg.patch_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        grid = self.cfg.grid_size
        self.pos_embed.data.copy_(torch.from_numpy(sincos_table(self.cfg.embed_dim, grid)).float()[None])
        if self.cfg.decoder:
            self.decoder_pos_embed.data.copy_(
                torch.from_numpy(sincos_table(self.cfg.decoder_embed_dim, grid)).float()[None])
            torch.nn.init.normal_(self.mask_token, std=0.02)
        w = self.patch_embed.proj.weight.data
        torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        torch.nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.bias, 0)
                nn.init.constant_(m.weight, 1.0)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        p, c = self.cfg.patch_size, self.cfg.in_chans
        h = w = imgs.shape[2] // p
        x = imgs.reshape(imgs.shape[0], c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], h * w, p * p * c)

    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
        n, length, d = x.shape
        len_keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones([n, length], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        if noise is None:
            noise = torch.rand(imgs.shape[0], self.cfg.num_patches)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


def perturb_(model: nn.Module, seed: int = 0) -> None:
    """Move every LayerNorm weight/bias and every bias off its 1/0 init, so swapped maps cannot pass."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".norm" in name or name.startswith("norm") or "decoder_norm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


def build_reference(cfg: MAEConfig, seed: int = 0) -> MaskedAutoencoderViT:
    torch.manual_seed(seed)
    model = MaskedAutoencoderViT(cfg).eval()
    perturb_(model, seed + 1)
    return model


def save_like_sfm(model: nn.Module, path: str | pathlib.Path, keys: list[str] | None = None) -> None:
    """torch.save as SFM's misc.save_model does: model, optimizer, epoch, scaler and a pickled Namespace."""
    state = model.state_dict()
    if keys is not None:
        state = {k: state[k] for k in keys}
    args = argparse.Namespace(model="mae_vit_base_patch16", input_size=model.cfg.img_size, mask_ratio=0.75,
                              norm_pix_loss=False, output_dir=pathlib.PosixPath("/tmp/sfm_out"),
                              blr=1.5e-4, batch_size=580)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 1599,
                "scaler": {"scale": 65536.0}, "args": args}, path)
