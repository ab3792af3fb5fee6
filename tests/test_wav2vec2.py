"""SeisLM Flax model: shapes, input checks, quantizer modes, initialisation and logical axes."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seisfuse import masking
from seisfuse.models.layers import per_example_attention
from seisfuse.models.wav2vec2 import (
    Wav2Vec2Config,
    Wav2Vec2ForPreTraining,
    grouped_conv_fft,
    prepare_waveforms,
)

T = 3001


@pytest.fixture(scope="module")
def tiny():
    cfg = Wav2Vec2Config.preset("tiny")
    model = Wav2Vec2ForPreTraining(cfg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, T, 3)).astype(np.float32)
    mask, neg = masking.pretraining_masks(rng, 2, cfg.frames(T), mask_prob=0.65, mask_length=10,
                                          min_masks=2, num_negatives=cfg.num_negatives)
    variables = jax.jit(lambda k: model.init(k, x, mask_time_indices=mask,
                                             sampled_negative_indices=neg))(jax.random.key(0))
    return cfg, Jitted(model), variables, x, mask, neg


class Jitted:
    """The model with a jitted `apply` (eager Flax applies are slow; input checks run at trace time)."""

    def __init__(self, model: Wav2Vec2ForPreTraining):
        self.module = model
        self.apply = jax.jit(model.apply, static_argnames=("method", "train"))


def test_presets_and_frames():
    base = Wav2Vec2Config.preset("seislm-base")
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads) == (240, 6, 12)
    assert base.frames(T) == 749 and base.frames(749) == 186
    large = Wav2Vec2Config.preset("seislm-large")
    assert (large.hidden_size, large.num_hidden_layers) == (768, 12)
    assert Wav2Vec2Config.from_dict(base.to_dict()) == base
    with pytest.raises(ValueError, match="unknown wav2vec2 preset"):
        Wav2Vec2Config.preset("huge")
    with pytest.raises(ValueError, match="not divisible"):
        Wav2Vec2Config(hidden_size=250)


def test_output_contract(tiny):
    cfg, model, variables, x, mask, neg = tiny
    out = model.apply(variables, x, mask_time_indices=mask, sampled_negative_indices=neg)
    assert set(out) == {"loss", "contrastive_loss", "diversity_loss", "codevector_perplexity",
                        "projected_states", "projected_quantized_states"}
    assert out["projected_states"].shape == (2, 749, cfg.proj_codevector_dim)
    assert out["projected_quantized_states"].shape == (2, 749, cfg.proj_codevector_dim)
    np.testing.assert_allclose(out["loss"], out["contrastive_loss"] + 0.1 * out["diversity_loss"],
                               rtol=1e-6)
    hidden = model.apply(variables, x, method="encode")
    assert hidden.shape == (2, 749, cfg.hidden_size)


def test_parameter_count_of_the_released_sizes():
    for name, millions in (("seislm-base", 11.36), ("seislm-large", 90.68)):
        cfg = Wav2Vec2Config.preset(name)
        model = Wav2Vec2ForPreTraining(cfg)
        x = jnp.zeros((1, 400, 3))
        mask = jnp.zeros((1, cfg.frames(400)), bool).at[0, :20].set(True)
        neg = jnp.zeros((1, cfg.frames(400), 100), jnp.int32)
        shapes = jax.eval_shape(lambda m=model, x=x, mask=mask, neg=neg: m.init(
            jax.random.key(0), x, mask_time_indices=mask, sampled_negative_indices=neg))
        count = sum(np.prod(a.shape) for a in jax.tree.leaves(nn.unbox(shapes["params"])))
        assert round(count / 1e6, 2) == millions, name


def test_every_parameter_has_logical_axis_names(tiny):
    _, _, variables, *_ = tiny
    boxed = jax.tree.leaves(variables["params"], is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert boxed and all(isinstance(v, nn.LogicallyPartitioned) for v in boxed)
    for v in boxed:
        assert len(v.names) == v.value.ndim


def test_initialisation_follows_the_original(tiny):
    cfg, _, variables, *_ = tiny
    p = nn.unbox(variables["params"])
    w2v = p["wav2vec2"]
    assert 0 <= w2v["masked_spec_embed"].min() and w2v["masked_spec_embed"].max() < 1
    codebook = p["quantizer"]["codevectors"]
    assert 0 <= codebook.min() and codebook.max() < 1
    assert abs(float(p["quantizer"]["weight_proj"]["kernel"].std()) - 1.0) < 0.05
    assert not np.any(p["quantizer"]["weight_proj"]["bias"])
    layer = w2v["encoder"]["layers_0"]
    q = layer["attention"]["query"]["kernel"]
    assert abs(float(q.std()) - cfg.initializer_range) < 0.005
    assert not np.any(layer["attention"]["query"]["bias"])
    np.testing.assert_array_equal(layer["layer_norm"]["scale"], 1.0)
    conv = w2v["feature_extractor"]["conv_layers_1"]["conv"]["kernel"]
    assert abs(float(conv.std()) / np.sqrt(2 / (3 * 32)) - 1) < 0.1  # Kaiming normal, fan_in = k·C_in
    pos = w2v["encoder"]["pos_conv_embed"]["conv"]
    np.testing.assert_allclose(pos["weight_g"], np.linalg.norm(pos["weight_v"], axis=(1, 2)), rtol=1e-6)


def test_input_checks(tiny):
    cfg, model, variables, x, mask, neg = tiny  # eager: the NaN check needs concrete inputs
    with pytest.raises(ValueError, match="3 channels"):
        model.module.apply(variables, x[..., :1], method="encode")
    with pytest.raises(ValueError, match="channels-first"):
        model.module.apply(variables, x.transpose(0, 2, 1), method="encode")
    with pytest.raises(ValueError, match=r"\[B, T, C\]"):
        model.module.apply(variables, x[0], method="encode")
    bad = x.copy()
    bad[1, 7, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.module.apply(variables, bad, method="encode")
    with pytest.raises(ValueError, match="mask_time_indices must be"):
        model.module.apply(variables, x, mask_time_indices=mask[:, :-1], method="encode")
    with pytest.raises(ValueError, match="sampled_negative_indices must be"):
        model.module.apply(variables, x, mask_time_indices=mask, sampled_negative_indices=neg[:, :5])
    with pytest.raises(ValueError, match="attention_mask must be"):
        model.module.apply(variables, x, attention_mask=np.ones((2, 10)), method="encode")
    with pytest.raises(ValueError, match="too few"):
        model.module.apply(variables, x[:, :4], method="encode")


def test_prepare_waveforms_normalises_per_trace_and_channel():
    rng = np.random.default_rng(0)
    x = 5 + 3 * rng.standard_normal((2, 500, 3))
    x[1, :, 2] = 7.0  # a dead channel: std 0 -> divided by 1, not blown up
    y = prepare_waveforms(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(y[0].std(axis=0), 1, rtol=1e-6)
    np.testing.assert_array_equal(y[1, :, 2], 0)
    x[0, 3, 1] = np.inf
    with pytest.raises(ValueError, match="batch 0, sample 3, channel 1"):
        prepare_waveforms(x)
    with pytest.raises(ValueError, match="channels"):
        prepare_waveforms(np.zeros((2, 500, 1)))


def test_training_quantizer_is_straight_through_gumbel(tiny):
    cfg, model, variables, x, mask, neg = tiny

    def run(key, temperature=2.0):
        return model.apply(variables, x, mask_time_indices=mask, sampled_negative_indices=neg,
                           gumbel_temperature=temperature, train=True, rngs={"gumbel": key})

    a, b = run(jax.random.key(1)), run(jax.random.key(2))
    assert not np.allclose(a["projected_quantized_states"], b["projected_quantized_states"])
    np.testing.assert_array_equal(a["codevector_perplexity"], b["codevector_perplexity"])
    # The forward value is an exact one-hot pick: project_q of concatenated code vectors.
    p = nn.unbox(variables["params"])
    groups, per_group = cfg.num_codevector_groups, cfg.num_codevectors_per_group
    table = p["quantizer"]["codevectors"].reshape(groups, per_group, -1)
    rows = [np.asarray(table[g]) for g in range(groups)]
    kernel, bias = p["project_q"]["kernel"], p["project_q"]["bias"]
    pairs = np.concatenate([rows[0][:, None, :].repeat(per_group, 1),
                            rows[1][None, :, :].repeat(per_group, 0)], -1)
    candidates = pairs.reshape(-1, cfg.codevector_dim)
    projected = candidates @ np.asarray(kernel) + np.asarray(bias)
    frame = np.asarray(a["projected_quantized_states"][0, 0])
    assert np.min(np.abs(projected - frame).max(axis=1)) < 1e-5
    with pytest.raises(Exception, match="gumbel"):
        model.apply(variables, x, mask_time_indices=mask, sampled_negative_indices=neg, train=True)

    def loss(params, temperature):
        out = model.module.apply({"params": params}, x, mask_time_indices=mask, sampled_negative_indices=neg,
                          gumbel_temperature=temperature, train=True, rngs={"gumbel": jax.random.key(1)})
        return out["loss"]

    grads = jax.jit(jax.grad(loss))(p, 0.5)
    weight_proj = grads["quantizer"]["weight_proj"]["kernel"]
    assert np.all(np.isfinite(weight_proj)) and np.any(weight_proj != 0), "gradient reaches the logits"


def test_negatives_from_another_example_make_the_loss_nan(tiny):
    _, model, variables, x, mask, neg = tiny
    bad = neg.copy()
    row = np.flatnonzero(mask[0])[0]
    bad[0, row, 0] = 749 + 3  # frame of example 1
    out = model.apply(variables, x, mask_time_indices=mask, sampled_negative_indices=bad)
    assert np.isnan(out["loss"]) and np.isnan(out["contrastive_loss"])


def test_jitted_step_does_not_recompile_for_new_masks(tiny):
    cfg, model, variables, x, *_ = tiny
    f = jax.jit(lambda v, m, n: model.module.apply(v, x, mask_time_indices=m,
                                                   sampled_negative_indices=n)["loss"])
    for seed in range(3):
        m, n = masking.pretraining_masks(np.random.default_rng(seed), 2, 749, mask_prob=0.65,
                                         mask_length=10, min_masks=2, num_negatives=cfg.num_negatives)
        assert np.isfinite(f(variables, m, n))
    assert f._cache_size() == 1


@pytest.mark.parametrize("kernel", [128, 7])
def test_fft_grouped_conv_matches_direct_convolution(kernel):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 50, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, 4, 16)), jnp.float32) / 10
    direct = jax.lax.conv_general_dilated(x, w, (1,), [(kernel // 2, (kernel - 1) // 2)],
                                          dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=4)
    np.testing.assert_allclose(grouped_conv_fft(x, w, 4), direct, atol=1e-5)


def test_group_norm_variant_builds_the_hf_layout():
    cfg = dataclasses.replace(Wav2Vec2Config.preset("hf-base"), conv_dim=(16,) * 7, hidden_size=32,
                              num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    model = Wav2Vec2ForPreTraining(cfg)
    x = jnp.zeros((1, 16000, 1))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, method="encode"))
    extractor = nn.unbox(shapes["params"])["wav2vec2"]["feature_extractor"]
    assert cfg.frames(16000) == 49
    assert set(extractor["conv_layers_0"]) == {"conv", "layer_norm"}
    assert set(extractor["conv_layers_1"]) == {"conv"}
    assert set(extractor["conv_layers_1"]["conv"]) == {"kernel"}


def test_per_example_attention_equals_fused_attention_and_its_gradients():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 37, 3, 5)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(np.arange(37)[None, :] < np.array([[37], [20]]))

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    fused = loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :],
                                                              scale=0.3))
    mine = loss(lambda q, k, v: per_example_attention(q, k, v, mask, 0.3))
    np.testing.assert_allclose(jax.jit(mine)(q, k, v), jax.jit(fused)(q, k, v), rtol=1e-6)
    for a, b in zip(jax.jit(jax.grad(mine, argnums=(0, 1, 2)))(q, k, v),
                    jax.jit(jax.grad(fused, argnums=(0, 1, 2)))(q, k, v), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_attention_implementations_agree_in_the_model(tiny):
    cfg, _, variables, x, mask, neg = tiny
    outs = [jax.jit(Wav2Vec2ForPreTraining(dataclasses.replace(cfg, attention_impl=impl)).apply)(
        variables, x, mask_time_indices=mask, sampled_negative_indices=neg)
        for impl in ("per_example", "fused")]
    np.testing.assert_allclose(outs[0]["projected_states"], outs[1]["projected_states"], atol=1e-5)
