"""SFM port vs the plain-PyTorch reference: every output a user reads, float32, max |diff| <= 1e-5."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict

from seisfuse.convert import export_sfm, load_sfm
from seisfuse.models.mae import MAEConfig, MaskedAutoencoder
from seisfuse.testing.mae_torch import build_reference, save_like_sfm

TOL = 1e-5


def _compare(cfg: MAEConfig, tmp_path, batch: int = 2) -> None:
    ref = build_reference(cfg, seed=cfg.embed_dim + cfg.img_size)
    path = tmp_path / "sfm.pth"
    save_like_sfm(ref, path)
    loaded_cfg, params = load_sfm(path)
    assert loaded_cfg == cfg

    rng = np.random.default_rng(1)
    images = rng.standard_normal((batch, 1, cfg.img_size, cfg.img_size)).astype(np.float32)
    noise = rng.random((batch, cfg.num_patches)).astype(np.float32)
    nhwc = jnp.asarray(images.transpose(0, 2, 3, 1))
    model = MaskedAutoencoder(cfg)
    variables = {"params": params}

    with torch.no_grad():
        t_images, t_noise = torch.from_numpy(images), torch.from_numpy(noise)
        t_loss, t_pred, t_mask = ref(t_images, 0.75, t_noise)
        t_latent, _, t_restore = ref.forward_encoder(t_images, 0.75, t_noise)
        natural = torch.arange(cfg.num_patches, dtype=torch.float32).repeat(batch, 1)
        t_full, t_full_mask, _ = ref.forward_encoder(t_images, 0.0, natural)

    loss, pred, mask = model.apply(variables, nhwc, noise=jnp.asarray(noise), mask_ratio=0.75)
    latent, mask_e, restore = model.apply(variables, nhwc, noise=jnp.asarray(noise), mask_ratio=0.75,
                                          method=model.encode)
    full, full_mask, full_restore = model.apply(variables, nhwc, method=model.encode)

    assert latent.shape == (batch, 1 + cfg.num_patches // 4, cfg.embed_dim)
    np.testing.assert_allclose(np.asarray(latent), t_latent.numpy(), rtol=0, atol=TOL)
    np.testing.assert_array_equal(np.asarray(restore), t_restore.numpy())
    np.testing.assert_array_equal(np.asarray(mask), t_mask.numpy())
    np.testing.assert_array_equal(np.asarray(mask_e), t_mask.numpy())
    np.testing.assert_allclose(np.asarray(pred), t_pred.numpy(), rtol=0, atol=TOL)
    assert abs(float(loss) - t_loss.item()) <= TOL
    np.testing.assert_allclose(np.asarray(full), t_full.numpy(), rtol=0, atol=TOL)
    np.testing.assert_array_equal(np.asarray(full_mask), t_full_mask.numpy())
    np.testing.assert_array_equal(np.asarray(full_restore[0]), np.arange(cfg.num_patches))


@pytest.mark.parametrize("preset,size", [("tiny", 224), ("tiny", 512),
                                         pytest.param("base", 224, marks=pytest.mark.slow)])
def test_parity(preset, size, tmp_path):
    _compare(MAEConfig.preset(preset, img_size=size), tmp_path)


def test_parity_norm_pix_loss_and_three_channels(tmp_path):
    cfg = MAEConfig.preset("tiny", norm_pix_loss=True, in_chans=3, img_size=64)
    ref = build_reference(cfg)
    rng = np.random.default_rng(2)
    images = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    noise = rng.random((2, cfg.num_patches)).astype(np.float32)
    with torch.no_grad():
        t_loss, t_pred, _ = ref(torch.from_numpy(images), 0.5, torch.from_numpy(noise))
    path = tmp_path / "ck.pth"
    save_like_sfm(ref, path)
    loaded_cfg, params = load_sfm(path)
    assert loaded_cfg.in_chans == 3
    model = MaskedAutoencoder(cfg)
    loss, pred, _ = model.apply({"params": params}, jnp.asarray(images.transpose(0, 2, 3, 1)),
                                noise=jnp.asarray(noise), mask_ratio=0.5)
    np.testing.assert_allclose(np.asarray(pred), t_pred.numpy(), rtol=0, atol=TOL)
    assert abs(float(loss) - t_loss.item()) <= TOL


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_round_trip_is_exact_and_loads_strict_in_torch(preset, tmp_path):
    cfg = MAEConfig.preset(preset)
    ref = build_reference(cfg, seed=3)
    src = tmp_path / "src.pth"
    save_like_sfm(ref, src)
    _, params = load_sfm(src)
    out = tmp_path / "exported.pth"
    export_sfm(params, cfg, out)

    fresh = build_reference(cfg, seed=99)
    fresh.load_state_dict(torch.load(out, weights_only=True)["model"], strict=True)
    for key, value in ref.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

    cfg_back, params_back = load_sfm(out)
    assert cfg_back == cfg
    flat = flatten_dict(params, sep="/")
    flat_back = flatten_dict(params_back, sep="/")
    assert flat.keys() == flat_back.keys()
    for key in flat:
        np.testing.assert_array_equal(np.asarray(flat[key]), np.asarray(flat_back[key]), err_msg=key)

