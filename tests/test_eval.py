"""Retrieval metrics (ranks, recall, chance), figures, and reading/saving items for embed/retrieve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seisfuse.eval import plots
from seisfuse.eval.embed import (
    guess_input_key,
    list_inputs,
    load_embeddings,
    read_items,
    save_embeddings,
)
from seisfuse.eval.metrics import (
    chance_metrics,
    pair_ranks,
    rank_metrics,
    retrieval_metrics,
    similarity,
)


def test_ranks_of_a_known_similarity_matrix():
    sim = np.array([[0.9, 0.1, 0.0],   # pair first
                    [0.8, 0.5, 0.7],   # pair third
                    [0.2, 0.9, 0.3]])  # pair second
    np.testing.assert_array_equal(pair_ranks(sim), [1, 3, 2])
    metrics = rank_metrics(pair_ranks(sim), ks=(1, 2))
    assert metrics == {"R@1": 1 / 3, "R@2": 2 / 3, "mean_rank": 2.0, "median_rank": 2.0}


def test_ties_count_against_the_query():
    assert list(pair_ranks(np.zeros((4, 4)))) == [4, 4, 4, 4]  # a collapsed model is last, not first


def test_chance_level():
    assert chance_metrics(256) == {"R@1": 1 / 256, "R@5": 5 / 256, "R@10": 10 / 256,
                                   "mean_rank": 128.5, "median_rank": 128.5}
    rng = np.random.default_rng(0)
    ranks = np.concatenate([pair_ranks(rng.standard_normal((256, 256))) for _ in range(20)])
    measured = rank_metrics(ranks)
    assert abs(measured["R@10"] - 10 / 256) < 0.01 and abs(measured["mean_rank"] - 128.5) < 3


def test_retrieval_metrics_both_ways_with_chance_beside():
    rng = np.random.default_rng(1)
    images = rng.standard_normal((50, 8))
    waveforms = images + 0.05 * rng.standard_normal((50, 8))
    waveforms[0] = -images[0]  # one pair pulled apart: its rank is last both ways
    m = retrieval_metrics({"image": images, "waveform": 3.0 * waveforms})  # the scale does not matter
    assert m["num_pairs"] == 50 and m["chance/R@1"] == 1 / 50
    for direction in ("img2wav", "wav2img"):
        assert m[f"retrieval/{direction}/R@1"] == pytest.approx(49 / 50)
        assert m[f"retrieval/{direction}/R@10"] == pytest.approx(49 / 50)
        assert m[f"retrieval/{direction}/mean_rank"] == pytest.approx((49 + 50) / 50)
        assert m[f"retrieval/{direction}/median_rank"] == 1.0
    waveforms = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1.0]])
    asymmetric = retrieval_metrics({"image": np.eye(3), "waveform": waveforms})
    assert asymmetric["retrieval/img2wav/R@1"] != asymmetric["retrieval/wav2img/R@1"]


def test_metric_errors_are_named():
    with pytest.raises(ValueError, match="pairs must align"):
        retrieval_metrics({"image": np.ones((3, 2)), "waveform": np.ones((4, 2))})
    with pytest.raises(KeyError, match="no 'waveform' embeddings"):
        retrieval_metrics({"image": np.ones((3, 2))})
    with pytest.raises(ValueError, match="NaN"):
        similarity(np.full((2, 2), np.nan), np.ones((2, 2)))
    with pytest.raises(ValueError, match="dimension"):
        similarity(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="square"):
        pair_ranks(np.ones((2, 3)))


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(2)
    n = 12
    images = rng.standard_normal((n, 224, 224, 1)).astype(np.float32)
    waveforms = rng.standard_normal((n, 3001, 3)).astype(np.float32)
    emb = {"image": rng.standard_normal((n, 8)), "waveform": rng.standard_normal((n, 8))}
    paths = [
        plots.retrieval_grid(tmp_path / "grid.png", waveforms, images,
                             similarity(emb["waveform"], emb["image"]), queries=[0, 1], k=3),
        plots.similarity_matrix(tmp_path / "sim.png", emb["image"], emb["waveform"]),
        plots.joint_space_map(tmp_path / "map.png", emb, {"S-P time (s)": rng.random(n)}),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="one length per pair"):
        plots.joint_space_map(tmp_path / "bad.png", emb, {"label": rng.random(n + 1)})
    np.testing.assert_allclose(np.abs(plots.pca_2d(np.array([[0, 0.], [2, 0], [4, 0]]))[:, 0]), [2, 0, 2])


def test_reading_items_normalises_and_names_them(tmp_path):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "one.npy", 5 + 2 * rng.standard_normal((224, 224)))
    np.save(tmp_path / "stack.npy", rng.standard_normal((2, 224, 224, 1)))
    files = list_inputs([tmp_path], (".npy",))
    items, names = read_items(files, "image")
    assert items.shape == (3, 224, 224, 1) and names == ["one.npy", "stack.npy[0]", "stack.npy[1]"]
    np.testing.assert_allclose(items[0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(items[0].std(), 1, atol=1e-3)
    assert guess_input_key(tmp_path / "one.npy") == "image"

    np.save(tmp_path / "wave.npy", 7 + rng.standard_normal((3001, 3)))
    waves, _ = read_items([tmp_path / "wave.npy"], "waveform")
    assert waves.shape == (1, 3001, 3)
    np.testing.assert_allclose(waves[0].std(axis=0), 1, atol=1e-3)
    assert guess_input_key(tmp_path / "wave.npy") == "waveform"


def test_bad_items_are_named(tmp_path):
    np.save(tmp_path / "cf.npy", np.zeros((3, 3001)))
    with pytest.raises(ValueError, match="channels-first"):
        read_items([tmp_path / "cf.npy"], "waveform")
    np.save(tmp_path / "small.npy", np.zeros((100, 100)))
    with pytest.raises(ValueError, match="expected a 224x224 image"):
        read_items([tmp_path / "small.npy"], "image")
    bad = np.zeros((3001, 3))
    bad[5, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN"):
        read_items([tmp_path / "nan.npy"], "waveform")
    with pytest.raises(FileNotFoundError, match="no such file"):
        list_inputs([tmp_path / "missing.npy"], (".npy",))
    with pytest.raises(ValueError, match="cannot tell an image from a waveform"):
        np.save(tmp_path / "odd.npy", np.zeros((5, 7)))
        guess_input_key(tmp_path / "odd.npy")


def test_embeddings_round_trip_with_their_names(tmp_path):
    emb = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    path, meta = save_embeddings(tmp_path / "gallery", emb, ["a", "b", "c"], "image", "runs/x")
    assert path.name == "gallery.npy" and json.loads(meta.read_text())["modality"] == "image"
    loaded, info = load_embeddings(path)
    np.testing.assert_array_equal(loaded, emb)
    assert info["names"] == ["a", "b", "c"]
    meta.write_text(json.dumps({"modality": "image", "names": ["a"]}))
    with pytest.raises(ValueError, match="N = 1 names"):
        load_embeddings(path)


def test_waveforms_of_a_p_aligned_run_are_cut_around_their_automatic_pick(tmp_path):
    from seisfuse.data import transforms
    from seisfuse.data.synthetic import generate_pair

    ex = generate_pair(4, 0)
    np.save(tmp_path / "event.npy", ex["waveform"])
    waves, _ = read_items([tmp_path / "event.npy"], "waveform", p_window=(50, 512))
    assert waves.shape == (1, 512, 3)
    # Within a few samples of the window cut at the true pick: the onset sits near sample 50.
    best = min(range(-15, 16), key=lambda s: np.abs(waves[0] - transforms.normalize_waveform(
        transforms.p_window(ex["waveform"], int(ex["p_sample"]) + s, 50, 512))).max())
    assert abs(best) <= 10
    np.save(tmp_path / "noise.npy", np.random.default_rng(0).normal(size=(3001, 3)))
    with pytest.raises(ValueError, match=r"noise\.npy: no clear P arrival"):
        read_items([tmp_path / "noise.npy"], "waveform", p_window=(50, 512))
