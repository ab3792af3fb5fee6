"""load_sfm on the file variants users have: encoder-only, fine-tuned, damaged."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seisfuse.convert import CheckpointError, load_sfm
from seisfuse.models.mae import MAEConfig, MaskedAutoencoder
from seisfuse.testing.mae_torch import build_reference, save_like_sfm


@pytest.fixture(scope="module")
def tiny_ref():
    return build_reference(MAEConfig.preset("tiny"), seed=5)


def _encoder_keys(model) -> list[str]:
    return [k for k in model.state_dict() if not k.startswith(("decoder", "mask_token"))]


def test_encoder_only_file_gives_encoder_only_config(tiny_ref, tmp_path):
    path = tmp_path / "enc.pth"
    save_like_sfm(tiny_ref, path, keys=_encoder_keys(tiny_ref))
    cfg, params = load_sfm(path)
    assert not cfg.decoder and cfg.embed_dim == 64 and cfg.depth == 2
    assert not any(k.startswith("decoder") for k in params)
    model = MaskedAutoencoder(cfg)
    images = np.random.default_rng(0).standard_normal((1, 1, 224, 224)).astype(np.float32)
    latent, _, _ = model.apply({"params": params}, jnp.asarray(images.transpose(0, 2, 3, 1)),
                               method=model.encode)
    with torch.no_grad():
        ref_latent, _, _ = tiny_ref.forward_encoder(torch.from_numpy(images), 0.0,
                                                    torch.arange(196.0).repeat(1, 1))
    np.testing.assert_allclose(np.asarray(latent), ref_latent.numpy(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="decoder=False"):
        model.apply({"params": params}, jnp.asarray(images.transpose(0, 2, 3, 1)),
                    noise=jnp.zeros((1, 196)))


def test_fine_tuned_file_loads_encoder_and_reports_head_keys(tiny_ref, tmp_path):
    state = {k: tiny_ref.state_dict()[k] for k in _encoder_keys(tiny_ref)}
    state["pos_embed"] = state["pos_embed"] + 0.01 * torch.randn_like(state["pos_embed"])  # learned
    state["decoder.mlahead.head2.0.weight"] = torch.randn(128, 64, 3, 3)
    state["decoder.cls.weight"] = torch.randn(6, 512, 3, 3)
    state["head.weight"] = torch.randn(1000, 64)
    path = tmp_path / "facies.pth"
    torch.save({"model": state, "epoch": 10}, path)
    with pytest.warns(UserWarning, match=r"3 keys.*decoder\.cls\.weight"):
        cfg, params = load_sfm(path)
    assert not cfg.decoder and cfg.learned_pos_embed
    np.testing.assert_array_equal(np.asarray(params["pos_embed"]), state["pos_embed"].numpy())


def test_missing_and_misshaped_keys_are_listed(tiny_ref, tmp_path):
    state = dict(tiny_ref.state_dict())
    del state["blocks.1.mlp.fc2.bias"]
    del state["norm.weight"]
    state["blocks.0.attn.proj.weight"] = torch.zeros(64, 32)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_sfm(path)
    message = str(info.value)
    assert "blocks.1.mlp.fc2.bias" in message and "norm.weight" in message
    assert "blocks.0.attn.proj.weight: file (64, 32), expected (64, 64)" in message


def test_not_an_sfm_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="not an SFM/MAE checkpoint"):
        load_sfm(path)


def test_unknown_width_needs_explicit_heads(tmp_path):
    cfg = MAEConfig.preset("tiny", embed_dim=48, num_heads=3, decoder=False)
    ref = build_reference(cfg)
    path = tmp_path / "odd.pth"
    save_like_sfm(ref, path)
    with pytest.raises(CheckpointError, match="num_heads"):
        load_sfm(path)
    loaded, _ = load_sfm(path, num_heads=3)
    assert (loaded.embed_dim, loaded.num_heads, loaded.decoder) == (48, 3, False)
