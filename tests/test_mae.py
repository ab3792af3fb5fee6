"""MaskedAutoencoder behaviour users rely on: shapes, errors, initialisation, position tables."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seisfuse.convert.sfm import params_to_state_dict
from seisfuse.models.layers import sincos_pos_embed_2d
from seisfuse.models.mae import (
    MAEConfig,
    MaskedAutoencoder,
    for_image_size,
    patchify,
    resize_pos_embed,
    unpatchify,
)
from seisfuse.testing.mae_torch import MaskedAutoencoderViT, sincos_table


@pytest.fixture(scope="module")
def tiny():
    cfg = MAEConfig.preset("tiny")
    model = MaskedAutoencoder(cfg)
    images = jnp.zeros((2, 224, 224, 1))
    params = nn.unbox(model.init(jax.random.key(0), images, noise=jnp.zeros((2, 196)))["params"])
    return cfg, model, params


def test_sincos_table_matches_original_and_spec_order():
    np.testing.assert_allclose(sincos_pos_embed_2d(768, 14, 14), sincos_table(768, 14).astype(np.float32))
    table = sincos_pos_embed_2d(64, 14, 14)
    row, col = 3, 5
    token = 1 + row * 14 + col
    assert table[token, 0] == pytest.approx(np.sin(col)) and table[token, 32] == pytest.approx(np.sin(row))
    assert not table[0].any(), "the cls slot is all zeros"


def test_mask_keeps_quarter_of_tokens(tiny):
    cfg, model, params = tiny
    images = jax.random.normal(jax.random.key(1), (2, 224, 224, 1))
    noise = jax.random.uniform(jax.random.key(2), (2, 196))
    latent, mask, restore = model.apply({"params": params}, images, noise=noise, mask_ratio=0.75,
                                        method=model.encode)
    assert latent.shape == (2, 1 + 49, 64)
    np.testing.assert_array_equal(np.asarray(mask.sum(axis=1)), [147, 147])
    expected = np.argsort(np.argsort(np.asarray(noise), axis=1), axis=1)
    np.testing.assert_array_equal(np.asarray(restore), expected)
    loss, pred, mask2 = model.apply({"params": params}, images, noise=noise)
    assert pred.shape == (2, 196, 256) and np.isfinite(float(loss))
    np.testing.assert_array_equal(np.asarray(mask2), np.asarray(mask))


@pytest.mark.parametrize("shape,match", [
    ((2, 1, 224, 224), "channels-first"),
    ((2, 128, 128, 1), r"\[B, 224, 224, 1\]"),
    ((224, 224, 1), "NHWC"),
])
def test_bad_image_shapes_are_named(tiny, shape, match):
    _, model, params = tiny
    with pytest.raises(ValueError, match=match):
        model.apply({"params": params}, jnp.zeros(shape), method=model.encode)


def test_masking_needs_matching_noise(tiny):
    _, model, params = tiny
    images = jnp.zeros((2, 224, 224, 1))
    with pytest.raises(ValueError, match="needs a noise array"):
        model.apply({"params": params}, images, mask_ratio=0.75, method=model.encode)
    with pytest.raises(ValueError, match=r"noise must have shape \[B, L\] = \(2, 196\)"):
        model.apply({"params": params}, images, noise=jnp.zeros((2, 100)))


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MAEConfig.preset("base", img_size=230)
    with pytest.raises(ValueError, match="unknown MAE preset"):
        MAEConfig.preset("huge")
    assert MAEConfig.from_dict(MAEConfig.preset("large").to_dict()) == MAEConfig.preset("large")


def test_fixed_position_tables_get_no_gradient(tiny):
    cfg, model, params = tiny
    images = jax.random.normal(jax.random.key(3), (2, 224, 224, 1))
    noise = jax.random.uniform(jax.random.key(4), (2, 196))
    grads = jax.grad(lambda p: model.apply({"params": p}, images, noise=noise)[0])(params)
    assert not np.asarray(grads["pos_embed"]).any() and not np.asarray(grads["decoder_pos_embed"]).any()
    assert np.asarray(grads["cls_token"]).any()

    learned = MaskedAutoencoder(MAEConfig.preset("tiny", learned_pos_embed=True))
    lparams = nn.unbox(learned.init(jax.random.key(0), images, noise=noise)["params"])
    lgrads = jax.grad(lambda p: learned.apply({"params": p}, images, noise=noise)[0])(lparams)
    assert np.asarray(lgrads["pos_embed"]).any()


def test_initialisation_matches_original_distributions():
    cfg = MAEConfig.preset("base")
    model = MaskedAutoencoder(cfg)
    params = nn.unbox(jax.jit(lambda k: model.init(k, jnp.zeros((1, 224, 224, 1)),
                                                   noise=jnp.zeros((1, 196))))(jax.random.key(0))["params"])
    ours = params_to_state_dict(jax.tree.map(np.asarray, params), cfg)
    torch.manual_seed(0)
    theirs = {k: v.numpy() for k, v in MaskedAutoencoderViT(cfg).state_dict().items()}
    assert ours.keys() == theirs.keys()
    for key, ref in theirs.items():
        got = ours[key]
        if key.endswith("pos_embed"):
            np.testing.assert_allclose(got, ref, atol=1e-7, err_msg=key)
        elif ref.std() == 0:
            np.testing.assert_array_equal(got, ref, err_msg=key)  # LayerNorm 1/0, zero biases
        else:
            assert abs(got.std() / ref.std() - 1) < 0.1, key
            assert np.abs(got).max() <= np.abs(ref).max() * 1.05 + 1e-3 * (got.size < 1000), key


@pytest.mark.parametrize("old,new", [(14, 32), (32, 14), (14, 48)])
def test_resize_pos_embed_matches_torch_bicubic(old, new):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((1, 1 + old * old, 24)).astype(np.float32)
    ours = resize_pos_embed(table, new)
    grid = torch.from_numpy(table[:, 1:]).reshape(1, old, old, 24).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    ref = ref.permute(0, 2, 3, 1).reshape(1, new * new, 24).numpy()
    # ours is computed in float64; torch accumulates the 16 taps in float32
    np.testing.assert_allclose(ours[:, 1:], ref, atol=5e-5, rtol=0)
    np.testing.assert_array_equal(ours[:, :1], table[:, :1])


def test_patchify_round_trip_and_order():
    images = jnp.arange(2 * 32 * 32 * 3, dtype=jnp.float32).reshape(2, 32, 32, 3)
    patches = patchify(images, 16)
    assert patches.shape == (2, 4, 768)
    np.testing.assert_array_equal(np.asarray(patches[0, 1, :3]), np.asarray(images[0, 0, 16, :]))
    np.testing.assert_array_equal(np.asarray(unpatchify(patches, 16, 3)), np.asarray(images))


def test_for_image_size_runs_at_the_new_size(tiny):
    cfg, model, params = tiny
    big_cfg, big_params = for_image_size(cfg, params, 512)
    assert big_cfg.img_size == 512 and big_cfg.learned_pos_embed
    assert big_params["pos_embed"].shape == (1, 1 + 32 * 32, 64)
    np.testing.assert_allclose(np.asarray(big_params["pos_embed"]),
                               resize_pos_embed(np.asarray(params["pos_embed"]), 32))
    big = MaskedAutoencoder(big_cfg)
    latent, _, _ = big.apply({"params": big_params}, jnp.zeros((1, 512, 512, 1)), method=big.encode)
    assert latent.shape == (1, 1 + 1024, 64)


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_mask_ratio_outside_its_range_is_named(ratio):
    from seisfuse.train.tasks import MAEPretraining

    cfg = MAEConfig.preset("tiny", img_size=32, patch_size=8)
    model = MaskedAutoencoder(cfg)
    images = jnp.zeros((1, 32, 32, 1))
    with pytest.raises(ValueError, match=r"mask_ratio must lie in \[0, 1\)"):
        model.init(jax.random.key(0), images, noise=jnp.zeros((1, cfg.num_patches)), mask_ratio=ratio)
    with pytest.raises(ValueError, match="mask_ratio must lie"):
        MAEPretraining(cfg, mask_ratio=ratio)


def test_empty_and_nan_batches_are_named():
    cfg = MAEConfig.preset("tiny", img_size=32, patch_size=8)
    model = MaskedAutoencoder(cfg)
    with pytest.raises(ValueError, match="empty batch"):
        model.init(jax.random.key(0), jnp.zeros((0, 32, 32, 1)), method=model.encode)
    with pytest.raises(ValueError, match="NaN or inf"):
        model.init(jax.random.key(0), jnp.full((1, 32, 32, 1), jnp.nan), method=model.encode)
