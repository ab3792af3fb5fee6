"""load_sfm on the file variants users have: encoder-only, fine-tuned, damaged; export order; the
key-table drivers (load, export, shape check) that both converters are built on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seisfuse.convert import CheckpointError, load_sfm
from seisfuse.convert.common import KeyEntry, export_table, load_table, table_shapes
from seisfuse.convert.sfm import params_to_state_dict
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


def test_unknown_decoder_width_assumes_maes_sixteen_heads_and_says_so(tmp_path):
    cfg = MAEConfig.preset("tiny", decoder_embed_dim=48, decoder_num_heads=16)
    save_like_sfm(build_reference(cfg), tmp_path / "odd_decoder.pth")
    with pytest.warns(UserWarning, match="assuming MAE's 16 decoder heads"):
        loaded, _ = load_sfm(tmp_path / "odd_decoder.pth")
    assert loaded.decoder_num_heads == 16
    loaded, _ = load_sfm(tmp_path / "odd_decoder.pth", decoder_num_heads=4)  # explicit: no guess
    assert loaded.decoder_num_heads == 4


def test_export_keeps_the_original_order_and_inverts_load(tiny_ref, tmp_path):
    path = tmp_path / "mae.pth"
    save_like_sfm(tiny_ref, path)
    cfg, params = load_sfm(path)
    exported = params_to_state_dict(jax.tree.map(np.asarray, params), cfg)
    assert list(exported) == list(tiny_ref.state_dict())
    for key, value in tiny_ref.state_dict().items():
        np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)


# ----------------------------------------------------------------- the key-table drivers

EVERY_KIND = [
    KeyEntry("raw", ("raw",), "raw", (1, 2, 3)),
    KeyEntry("lin", ("lin",), "linear", (5, 4)),
    KeyEntry("lin_nb", ("lin_nb",), "linear", (5, 4), bias=False),
    KeyEntry("q", ("attn", "query"), "attn_in", (6, 6), heads=2),
    KeyEntry("o", ("attn", "out"), "attn_out", (6, 6), heads=3),
    KeyEntry("qkv", ("blk", "attn"), "qkv", (12, 4), heads=2),
    KeyEntry("c1", ("c1",), "conv1d", (4, 3, 5)),
    KeyEntry("c2", ("c2",), "conv2d", (4, 3, 2, 2), bias=False),
    KeyEntry("ln", ("ln",), "norm", (4,)),
    KeyEntry("wn", ("wn",), "weight_norm", (6, 3, 5)),
    KeyEntry("bn", ("bn",), "bn", (4,)),
]


def _state_for(table) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    state = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in table_shapes(table).items()}
    state["bn.num_batches_tracked"] = np.array(7, np.int64)
    return state


def test_every_kind_round_trips_exactly_in_the_original_order():
    state = _state_for(EVERY_KIND)
    variables, unused = load_table(state, EVERY_KIND, "toy")
    assert unused == []
    assert variables["params"]["attn"]["query"]["kernel"].shape == (6, 2, 3)  # [in, heads, head_dim]
    assert variables["params"]["blk"]["attn"]["value"]["bias"].shape == (2, 2)
    assert variables["batch_stats"]["bn"]["var"].shape == (4,)
    np.testing.assert_array_equal(variables["params"]["lin"]["kernel"], state["lin.weight"].T)
    np.testing.assert_array_equal(variables["params"]["c2"]["kernel"],
                                  state["c2.weight"].transpose(2, 3, 1, 0))  # NHWC: [kh, kw, in, out]
    back = export_table(variables, EVERY_KIND, "toy")
    assert list(back) == list(state)
    for key, value in state.items():
        expected = np.zeros((), np.int64) if key == "bn.num_batches_tracked" else value  # written as 0
        assert back[key].dtype == expected.dtype and back[key].shape == expected.shape, key
        np.testing.assert_array_equal(back[key], expected, err_msg=key)


def test_the_drivers_name_what_does_not_fit():
    state = _state_for(EVERY_KIND)
    bad = {**state, "bn.num_batches_tracked": np.zeros((), np.float32), "extra.weight": np.zeros(2)}
    del bad["wn.bias"]
    with pytest.raises(CheckpointError) as info:
        load_table(bad, EVERY_KIND, "toy")
    message = str(info.value)
    assert "missing keys (1): wn.bias" in message and "unexpected keys (1): extra.weight" in message
    assert "bn.num_batches_tracked: dtype float32, expected an integer counter" in message
    # Keys outside the model's own prefixes are returned for a warning instead.
    _, unused = load_table({**state, "head.weight": np.zeros(2)}, EVERY_KIND, "toy", owned=("lin",))
    assert unused == ["head.weight"]
    variables, _ = load_table(state, EVERY_KIND, "toy")
    del variables["batch_stats"]["bn"]["mean"]
    with pytest.raises(CheckpointError, match="lack 1 tensors the original has: batch_stats/bn/mean"):
        export_table(variables, EVERY_KIND, "toy")
    variables, _ = load_table(state, EVERY_KIND, "toy")
    variables["params"]["spare"] = np.zeros(3)
    with pytest.raises(CheckpointError, match="hold 1 tensors the original does not have: params/spare"):
        export_table(variables, EVERY_KIND, "toy")
    variables, _ = load_table(state, EVERY_KIND, "toy")
    variables["params"]["ln"]["scale"] = np.zeros(5)
    with pytest.raises(CheckpointError, match=r"ln.weight: file \(5,\), expected \(4,\)"):
        export_table(variables, EVERY_KIND, "toy")
    with pytest.raises(ValueError, match="unknown key-table kind 'lstm'"):
        KeyEntry("rnn", ("rnn",), "lstm", (2, 2))
