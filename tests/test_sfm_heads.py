"""SFM's fine-tuned downstream models: parity with the torch references, file round trips, errors."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import errors

from seisfuse.convert import CheckpointError, load_sfm
from seisfuse.convert.sfm import (
    export_sfm_finetuned,
    finetuned_model_config,
    finetuned_model_from_config,
    load_sfm_finetuned,
)
from seisfuse.models.layers import drop_path, resize_bilinear_align_corners
from seisfuse.models.mae import MAEConfig
from seisfuse.models.sfm_heads import (
    SFMRegressor,
    SFMSegmenter,
    encoder_params_from_mae,
    interpolation_trace_mask,
)
from seisfuse.testing.mae_torch import build_reference, save_like_sfm
from seisfuse.testing.sfm_finetune_torch import (
    RegressionRef,
    SegmentationRef,
    perturb_,
    save_like_sfm_finetune,
)

SMALL_TOL = 1e-5  # before the final upsampling
FULL_TOL = 1e-4  # the spec's bar for the full-resolution output
TINY = MAEConfig.preset("tiny", depth=6, img_size=64, decoder=False)  # depth 6: taps 1, 2, 3, 4


def _rel(ours, theirs) -> float:
    theirs = np.asarray(theirs)
    return float(np.abs(np.asarray(ours) - theirs).max() / max(1.0, np.abs(theirs).max()))


def _nchw_to_nhwc(x: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def _images(cfg: MAEConfig, batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen)


def _reference(kind: str, cfg: MAEConfig, seed: int = 0):
    torch.manual_seed(seed)
    ref = SegmentationRef(cfg, 6, head_channels=16 if cfg.embed_dim < 128 else 128) \
        if kind == "segment" else RegressionRef(cfg, 1)
    perturb_(ref, seed + 1)
    return ref


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """Perturbed tiny torch references of both heads, saved as SFM-Finetune's save_model does."""
    out = {}
    for kind in ("segment", "regress"):
        ref = _reference(kind, TINY, seed=3)
        path = tmp_path_factory.mktemp(kind) / f"{kind}.pth"
        save_like_sfm_finetune(ref, path, "custom_tiny", "SEAM" if kind == "segment" else "Denoise")
        out[kind] = (ref, path)
    return out


def _compare(kind: str, ref, path, cfg: MAEConfig, num_heads: int | None, batch: int) -> dict[str, float]:
    model, variables = load_sfm_finetuned(path, num_heads=num_heads)
    assert type(model) is (SFMSegmenter if kind == "segment" else SFMRegressor)
    assert model.cfg.embed_dim == cfg.embed_dim and model.cfg.depth == cfg.depth
    images = _images(cfg, batch, seed=7)
    out, state = model.apply(variables, _nchw_to_nhwc(images), capture_intermediates=True,
                             mutable=["intermediates"])
    inter = state["intermediates"]["decoder"]
    with torch.no_grad():
        small_ref, full = ref.forward_parts(images)
    # segmenter: logits before the final ×4 resize; regressor: before the last block's ×2 upsampling
    small = inter["__call__"][0] if kind == "segment" else inter["blocks_2_conv2"]["__call__"][0]
    assert out.shape == full.permute(0, 2, 3, 1).shape
    return {"small": _rel(small, small_ref.permute(0, 2, 3, 1)), "full": _rel(out, full.permute(0, 2, 3, 1))}


@pytest.mark.parametrize("kind", ["segment", "regress"])
def test_tiny_parity(kind, tiny_files):
    ref, path = tiny_files[kind]
    errors = _compare(kind, ref, path, TINY, num_heads=4, batch=2)
    assert errors["small"] <= SMALL_TOL and errors["full"] <= FULL_TOL, errors


@pytest.mark.parametrize("kind", ["segment", "regress"])
def test_base_width_parity(kind, tmp_path):
    cfg = MAEConfig.preset("base", decoder=False)
    ref = _reference(kind, cfg, seed=11)
    path = tmp_path / "base.pth"
    save_like_sfm_finetune(ref, path, "vit_base_patch16", "Salt" if kind == "segment" else "Reflection")
    errors = _compare(kind, ref, path, cfg, num_heads=None, batch=1)  # 12 heads from args.model
    assert errors["small"] <= SMALL_TOL and errors["full"] <= FULL_TOL, errors


@pytest.mark.parametrize("kind", ["segment", "regress"])
def test_export_loads_strict_in_torch_and_round_trips(kind, tiny_files, tmp_path):
    ref, path = tiny_files[kind]
    model, variables = load_sfm_finetuned(path, num_heads=4)
    out = tmp_path / "export.pth"
    export_sfm_finetuned(model, variables, out)
    exported = torch.load(out, weights_only=True)["model"]
    assert list(exported) == list(ref.state_dict())  # same keys, same order
    fresh = SegmentationRef(TINY, 6, 16) if kind == "segment" else RegressionRef(TINY, 1)
    fresh.load_state_dict(exported, strict=True)
    for key, value in ref.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)
    images = _images(TINY, 2, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images), ref(images), rtol=0, atol=0)
    again, again_vars = load_sfm_finetuned(out)  # head count from the export's own config
    assert again == model
    jax.tree.map(np.testing.assert_array_equal, again_vars, variables)


def test_narrow_regression_decoder_round_trips_with_its_widths(tmp_path):
    # CPU-sized runs narrow the decoder; a converted or exported run must keep its widths.
    model = SFMRegressor(TINY, decoder_channels=(16, 8, 8, 4), skip_channels=4)
    images = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 64, 1)), jnp.float32)
    variables = model.init(jax.random.key(0), images)
    export_sfm_finetuned(model, variables, tmp_path / "narrow.pth")
    again, again_vars = load_sfm_finetuned(tmp_path / "narrow.pth")
    assert again.decoder_channels == (16, 8, 8, 4) and again.skip_channels == 4
    np.testing.assert_array_equal(again.apply(again_vars, images), model.apply(variables, images))
    assert finetuned_model_from_config(json.loads(json.dumps(finetuned_model_config(again)))) == again
    with pytest.raises(ValueError, match="decoder_channels must be 4 positive widths"):
        SFMRegressor(TINY, decoder_channels=(16, 8))


def test_train_mode_matches_torch_batch_statistics(tiny_files):
    ref, path = tiny_files["segment"]
    model, variables = load_sfm_finetuned(path, num_heads=4)
    assert model.drop_path_rate == 0.1  # the run's args.drop_path, for further training
    model = model.clone(drop_path_rate=0.0)  # the reference has no stochastic depth
    images = _images(TINY, 2, seed=9)
    logits, updated = model.apply(variables, _nchw_to_nhwc(images), train=True, mutable=["batch_stats"])
    trained = {k: v.clone() for k, v in ref.state_dict().items()}
    try:
        ref.train()
        with torch.no_grad():
            ref_logits = ref(images)
        moved = {k: v.clone() for k, v in ref.state_dict().items()}
    finally:
        ref.load_state_dict(trained)
        ref.eval()
    assert _rel(logits, ref_logits.permute(0, 2, 3, 1)) <= FULL_TOL
    stats = updated["batch_stats"]["decoder"]["head3_1"]["bn"]
    before = variables["batch_stats"]["decoder"]["head3_1"]["bn"]
    assert not np.allclose(stats["var"], before["var"])
    np.testing.assert_allclose(stats["mean"], moved["decoder.mlahead.head3.4.running_mean"], atol=1e-5)
    np.testing.assert_allclose(stats["var"], moved["decoder.mlahead.head3.4.running_var"], rtol=1e-5)
    with pytest.raises(errors.ModifyScopeVariableError):
        model.apply(variables, _nchw_to_nhwc(images), train=True)  # batch_stats must be mutable


def test_drop_path_only_in_training(tiny_files):
    loaded, variables = load_sfm_finetuned(tiny_files["segment"][1], num_heads=4)
    model, plain = loaded.clone(drop_path_rate=0.5), loaded.clone(drop_path_rate=0.0)
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 1)), jnp.float32)
    np.testing.assert_array_equal(model.apply(variables, images), plain.apply(variables, images))
    train = jax.jit(lambda key: model.apply(variables, images, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": key})[0])
    np.testing.assert_array_equal(train(jax.random.key(1)), train(jax.random.key(1)))
    assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
    with pytest.raises(errors.InvalidRngError, match="dropout"):
        jax.eval_shape(lambda: model.apply(variables, images, train=True, mutable=["batch_stats"]))


def test_drop_path_drops_whole_examples_and_rescales():
    x = jnp.ones((4000, 3, 2))
    y = np.asarray(drop_path(x, 0.25, jax.random.key(0)))
    per_example = y.reshape(4000, -1)
    assert set(np.unique(per_example)) <= {0.0, np.float32(1 / 0.75)}
    assert (per_example == per_example[:, :1]).all()
    assert abs((per_example[:, 0] == 0).mean() - 0.25) < 0.03


@pytest.mark.parametrize("size,out", [(14, 56), (56, 224), (5, 10), (48, 192)])
def test_align_corners_resize_matches_torch(size, out):
    x = np.random.default_rng(size).standard_normal((2, 6, size, size + 1)).astype(np.float32)
    theirs = torch.nn.functional.interpolate(torch.from_numpy(x), size=(out, 2 * out), mode="bilinear",
                                             align_corners=True).numpy()
    ours = resize_bilinear_align_corners(jnp.asarray(x.transpose(0, 2, 3, 1)), out, 2 * out)
    np.testing.assert_allclose(np.asarray(ours).transpose(0, 3, 1, 2), theirs, rtol=0, atol=1e-6)
    half_pixel = jax.image.resize(jnp.asarray(x.transpose(0, 2, 3, 1)), (2, out, 2 * out, 6), "bilinear")
    assert np.abs(np.asarray(half_pixel).transpose(0, 3, 1, 2) - theirs).max() > 1e-2


def test_interpolation_mask_semantics():
    rng = np.random.default_rng(0)
    mask = interpolation_trace_mask(rng, 3, 200)  # 12 blocks of 16 traces, 8 trailing columns
    assert mask.shape == (3, 1, 200, 1) and mask.dtype == np.float32
    columns = mask[0, 0, :, 0]
    assert (mask == mask[:1]).all(), "one draw for the whole batch"
    assert not columns[192:].any(), "trailing columns beyond the last full block are never kept"
    blocks = columns[:192].reshape(12, 16)
    assert ((blocks == 0) | (blocks == 1)).all() and (blocks == blocks[:, :1]).all()
    assert blocks[:, 0].sum() == int(12 * 0.75)
    draws = {tuple(interpolation_trace_mask(rng, 1, 64)[0, 0, ::16, 0]) for _ in range(60)}
    assert len(draws) == 4, "every choice of 3 of 4 blocks occurs"
    np.testing.assert_array_equal(interpolation_trace_mask(np.random.default_rng(5), 2, 64),
                                  interpolation_trace_mask(np.random.default_rng(5), 2, 64))


def test_encoder_params_from_mae_fit_the_heads(tmp_path):
    mae_cfg = MAEConfig.preset("tiny", depth=4)
    path = tmp_path / "mae.pth"
    save_like_sfm(build_reference(mae_cfg, seed=2), path)
    loaded_cfg, mae_params = load_sfm(path, num_heads=4)
    cfg, encoder = encoder_params_from_mae(loaded_cfg, mae_params, 96)
    assert cfg.img_size == 96 and cfg.learned_pos_embed and not cfg.decoder
    model = SFMSegmenter(cfg, num_classes=2, head_channels=8)
    images = jnp.zeros((1, 96, 96, 1))
    init = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images))
    assert jax.tree.map(np.shape, encoder) == jax.tree.map(np.shape, init["params"]["encoder"])
    variables = {**init, "params": {**init["params"], "encoder": encoder}}
    assert jax.eval_shape(model.apply, variables, images).shape == (1, 96, 96, 2)
    with pytest.raises(ValueError, match="missing blocks_3"):
        encoder_params_from_mae(loaded_cfg, {k: v for k, v in mae_params.items() if k != "blocks_3"}, 96)


def test_config_round_trips_through_json(tiny_files):
    for kind in ("segment", "regress"):
        model, _ = load_sfm_finetuned(tiny_files[kind][1], num_heads=4)
        config = json.loads(json.dumps(finetuned_model_config(model)))
        assert config["task"] == kind and finetuned_model_from_config(config) == model
    with pytest.raises(ValueError, match="task must be"):
        finetuned_model_from_config({"task": "classify"})
    with pytest.raises(ValueError, match="expected keys"):
        finetuned_model_from_config({**config, "num_classes": 3})


# ----------------------------------------------------------------- errors


def test_missing_and_unexpected_keys_are_listed(tiny_files, tmp_path):
    ref, _ = tiny_files["segment"]
    state = dict(ref.state_dict())
    del state["decoder.mlahead.head4.3.weight"]
    del state["head.bias"]
    state["decoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    save_like_sfm_finetune(ref, path, "custom", "SEAM", state=state)
    with pytest.raises(CheckpointError) as info:
        load_sfm_finetuned(path, num_heads=4)
    assert "decoder.mlahead.head4.3.weight" in str(info.value) and "head.bias" in str(info.value)
    del state["decoder.extra.weight"]
    state["decoder.mlahead.head4.3.weight"] = ref.state_dict()["decoder.mlahead.head4.3.weight"]
    state["head.bias"] = ref.state_dict()["head.bias"]
    state["decoder.extra.weight"] = torch.zeros(3)
    save_like_sfm_finetune(ref, path, "custom", "SEAM", state=state)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): decoder\.extra\.weight"):
        load_sfm_finetuned(path, num_heads=4)


def test_not_finetuned_and_inconsistent_files(tiny_files, tmp_path):
    path = tmp_path / "mae.pth"
    save_like_sfm(build_reference(MAEConfig.preset("tiny"), seed=1), path)
    with pytest.raises(CheckpointError, match="not a fine-tuned SFM checkpoint.*load_sfm"):
        load_sfm_finetuned(path)
    ref, _ = tiny_files["regress"]
    save_like_sfm_finetune(ref, path, "vit_base_patch16", "Denoise")
    with pytest.raises(CheckpointError, match="'vit_base_patch16'.*width 64, depth 6.*num_heads"):
        load_sfm_finetuned(path)
    save_like_sfm_finetune(ref, path, "custom", "Denoise")
    with pytest.raises(CheckpointError, match="num_heads"):
        load_sfm_finetuned(path)


def test_depth_below_four_is_refused(tmp_path):
    shallow = MAEConfig.preset("tiny", depth=3, img_size=64, decoder=False)
    with pytest.raises(ValueError, match="depth >= 4"):
        SFMSegmenter(shallow, num_classes=2)
    ref = SegmentationRef(TINY, 2, 8)
    deep = ("blocks.3.", "blocks.4.", "blocks.5.")
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith(deep)}
    path = tmp_path / "shallow.pth"
    save_like_sfm_finetune(ref, path, "custom", "Salt", state=state)
    with pytest.raises(CheckpointError, match="depth >= 4"):
        load_sfm_finetuned(path, num_heads=4)


def test_regressor_needs_one_channel_patch_16():
    with pytest.raises(ValueError, match="in_chans=1 and patch_size=16"):
        SFMRegressor(MAEConfig.preset("tiny", in_chans=3, decoder=False))
    with pytest.raises(ValueError, match="in_chans=1 and patch_size=16"):
        SFMRegressor(MAEConfig.preset("tiny", patch_size=8, decoder=False))


@pytest.mark.parametrize("shape,match", [
    ((1, 1, 64, 64), "channels-first"),
    ((1, 96, 96, 1), r"\[B, 64, 64, 1\].*encoder_params_from_mae"),
])
def test_bad_images_are_named(tiny_files, shape, match):
    model, variables = load_sfm_finetuned(tiny_files["segment"][1], num_heads=4)
    with pytest.raises(ValueError, match=match):
        model.apply(variables, jnp.zeros(shape))
    images = np.zeros((1, 64, 64, 1), np.float32)
    images[0, 3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.apply(variables, images)
