"""SeisLM converter: file layouts, config inference, fine-tuned files, errors, export and round trips."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seisfuse.convert.seislm import (
    expected_shapes,
    export_seislm,
    load_seislm,
)
from seisfuse.convert.torch_format import CheckpointError, read_torch_checkpoint
from seisfuse.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2ForPreTraining
from seisfuse.testing import wav2vec2_torch as ref

TINY = Wav2Vec2Config.preset("tiny")


@pytest.fixture(scope="module")
def reference():
    return ref.build(ref.ref_config(TINY), seed=4)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_tree(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_key_table_matches_the_original_state_dict(reference):
    sd = reference.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(TINY)
    base = ref.Wav2Vec2ForPreTraining(ref.ref_config(Wav2Vec2Config.preset("seislm-base")))
    assert len(base.state_dict()) == len(expected_shapes(Wav2Vec2Config.preset("seislm-base"))) == 121


def test_lightning_ckpt_is_read_without_running_its_pickles(reference, tmp_path):
    path = tmp_path / "last.ckpt"
    ref.save_lightning_checkpoint(reference, path)
    raw = read_torch_checkpoint(path)
    config = raw["hyper_parameters"]["config"]
    assert type(config).__name__ == "ConfigDict" and config.module.startswith("ml_collections")
    assert isinstance(raw["optimizer_states"][0]["state"][0]["exp_avg"], np.ndarray)
    cfg, params = load_seislm(path)
    assert cfg == TINY


def test_weight_norm_namings_and_plain_files_give_the_same_params(reference, tmp_path):
    loaded = []
    for name, obj in [("a.ckpt", ref.lightning_checkpoint(reference)),
                      ("b.ckpt", ref.lightning_checkpoint(reference, weight_norm_legacy=True)),
                      ("c.pt", state(reference)),
                      ("d.pt", ref.legacy_weight_norm_names(state(reference)))]:
        torch.save(obj, tmp_path / name)
        loaded.append(load_seislm(tmp_path / name))
    for cfg, params in loaded[1:]:
        assert cfg == loaded[0][0]
        assert_same_tree(params, loaded[0][1])


def test_converted_tree_is_the_flax_models_tree(reference, tmp_path):
    torch.save(state(reference), tmp_path / "sd.pt")
    cfg, params = load_seislm(tmp_path / "sd.pt")
    model = Wav2Vec2ForPreTraining(cfg)
    x = jnp.zeros((1, 400, 3))
    frames = cfg.frames(400)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), x, mask_time_indices=jnp.ones((1, frames), bool),
        sampled_negative_indices=jnp.zeros((1, frames, cfg.num_negatives), jnp.int32)))
    expected = jax.tree.map(lambda a: a.shape, nn.unbox(shapes["params"]))
    assert jax.tree.map(lambda a: a.shape, params) == expected


def test_round_trip_flax_state_dict_flax_is_exact(reference, tmp_path):
    model = Wav2Vec2ForPreTraining(TINY)
    x = jnp.zeros((1, 400, 3))
    frames = TINY.frames(400)
    init = jax.jit(lambda key: model.init(key, x, mask_time_indices=jnp.ones((1, frames), bool),
                                          sampled_negative_indices=jnp.zeros((1, frames, 100), jnp.int32)))
    params = nn.unbox(init(jax.random.key(7))["params"])
    for lightning in (False, True):
        path = tmp_path / f"export{int(lightning)}.ckpt"
        export_seislm(params, TINY, path, lightning=lightning)
        cfg, back = load_seislm(path)
        assert cfg == TINY
        assert_same_tree(back, params)


def test_export_loads_strictly_into_the_original_model(reference, tmp_path):
    torch.save(state(reference), tmp_path / "sd.pt")
    cfg, params = load_seislm(tmp_path / "sd.pt")
    for lightning in (False, True):
        path = tmp_path / f"out{int(lightning)}.pt"
        export_seislm(params, cfg, path, lightning=lightning)
        loaded = torch.load(path, weights_only=True)
        sd = {k.removeprefix("model."): v for k, v in
              (loaded["state_dict"] if lightning else loaded).items()}
        fresh = ref.Wav2Vec2ForPreTraining(ref.ref_config(cfg))
        fresh.load_state_dict(sd, strict=True)
        for key, value in reference.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key


def fine_tuned_checkpoint(reference) -> dict:
    """Like SeisLM's phase-picking Lightning file: trunk + head, masked_spec_embed removed."""
    sd = {f"model.{k}": v for k, v in state(reference).items()
          if k.startswith("wav2vec2.") and k != "wav2vec2.masked_spec_embed"}
    h = TINY.hidden_size
    sd.update({"model.classifier.weight": torch.randn(3, h + 3), "model.classifier.bias": torch.randn(3),
               "model.double_conv.double_conv.0.weight": torch.randn(h + 3, h + 3, 3),
               "model.double_conv.double_conv.1.running_mean": torch.zeros(h + 3),
               "model.double_conv.double_conv.1.num_batches_tracked": torch.tensor(5)})
    return {"state_dict": sd, "hyper_parameters": {"model_config": {"num_labels": 3}}}


def test_fine_tuned_checkpoint_loads_the_trunk_and_reports_the_head(reference, tmp_path):
    path = tmp_path / "phasepick.ckpt"
    torch.save(fine_tuned_checkpoint(reference), path)
    with pytest.warns(UserWarning, match=r"5 keys .*classifier\.bias"):
        cfg, params = load_seislm(path)
    assert set(params) == {"wav2vec2"} and "masked_spec_embed" not in params["wav2vec2"]
    x = np.random.default_rng(0).standard_normal((1, 3001, 3)).astype(np.float32)
    hidden = jax.jit(Wav2Vec2ForPreTraining(cfg).apply, static_argnames="method")(
        {"params": params}, x, method="encode")
    with torch.no_grad():
        expected, _ = reference.wav2vec2(torch.from_numpy(x).transpose(1, 2))
    assert float(np.abs(np.asarray(hidden) - expected.numpy()).max()) <= 1e-5
    export_seislm(params, cfg, tmp_path / "trunk.pt")
    trunk = torch.load(tmp_path / "trunk.pt", weights_only=True)
    assert set(trunk) == {k for k in reference.state_dict()
                          if k.startswith("wav2vec2.") and k != "wav2vec2.masked_spec_embed"}


def test_hf_bare_model_keys(reference, tmp_path):
    """A Wav2Vec2Model state_dict (no `wav2vec2.` prefix, no quantizer) loads as a trunk."""
    sd = {k.removeprefix("wav2vec2."): v for k, v in state(reference).items() if k.startswith("wav2vec2.")}
    torch.save(sd, tmp_path / "bare.bin")
    _, params = load_seislm(tmp_path / "bare.bin")
    assert set(params) == {"wav2vec2"} and "masked_spec_embed" in params["wav2vec2"]


def test_missing_mis_shaped_and_unexpected_keys_are_listed(reference, tmp_path):
    sd = state(reference)
    del sd["wav2vec2.encoder.layers.1.final_layer_norm.bias"]
    sd["project_q.bias"] = torch.zeros(7)
    sd["wav2vec2.encoder.layers.0.attention.rotary.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_seislm(tmp_path / "bad.pt")
    message = str(err.value)
    assert "wav2vec2.encoder.layers.1.final_layer_norm.bias" in message
    assert "project_q.bias: file (7,), expected (32,)" in message
    assert "unexpected keys (1): wav2vec2.encoder.layers.0.attention.rotary.weight" in message
    sd = state(reference)
    sd["wav2vec2.encoder.layers.0.attention.rotary.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="unexpected keys.*rotary"):
        load_seislm(tmp_path / "extra.pt")


def test_config_the_shapes_cannot_tell(reference, tmp_path):
    sd = state(reference)
    torch.save(sd, tmp_path / "sd.pt")
    cfg, _ = load_seislm(tmp_path / "sd.pt", num_attention_heads=8, pretraining_attention_quirk=True)
    assert cfg.num_attention_heads == 8 and cfg.pretraining_attention_quirk
    odd = ref.Wav2Vec2ForPreTraining(ref.ref_config(Wav2Vec2Config.preset("tiny", hidden_size=48)))
    torch.save(odd.state_dict(), tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="pass num_attention_heads="):
        load_seislm(tmp_path / "odd.pt")
    assert load_seislm(tmp_path / "odd.pt", num_attention_heads=4)[0].hidden_size == 48
    with pytest.raises(CheckpointError, match="not a SeisLM/wav2vec2 checkpoint"):
        torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
        load_seislm(tmp_path / "other.pt")


def test_released_config_overrides_conventions(reference, tmp_path):
    ckpt = ref.lightning_checkpoint(reference)
    fields = ckpt["hyper_parameters"]["config"].model_config
    fields.num_attention_heads = 2
    fields.diversity_loss_weight = 0.3
    torch.save(ckpt, tmp_path / "last.ckpt")
    cfg, _ = load_seislm(tmp_path / "last.ckpt")
    assert cfg.num_attention_heads == 2 and cfg.diversity_loss_weight == 0.3
