"""grain pipelines: task outputs, determinism, per-process sharding, epochs, exact checkpoint
restore (single and multi-worker), and the TFDS ArrayRecord builder read back through grain."""

import json

import numpy as np
import pytest

from seisfuse.data.pipeline import ArraySource, SyntheticSource, make_dataset


def _tagged_source(n: int = 24) -> ArraySource:
    """Cheap paired examples whose p_sample carries the example id."""
    rng = np.random.default_rng(0)
    return ArraySource(
        image=rng.normal(size=(n, 224, 224, 1)).astype(np.float32),
        waveform=rng.normal(size=(n, 3001, 3)).astype(np.float32),
        p_sample=np.arange(n, dtype=np.int32),
        s_sample=np.arange(n, dtype=np.int32) + 500,
    )


def _ids(ds, batches):
    it = iter(ds)
    return [int(i) for _ in range(batches) for i in next(it)["p_sample"]]


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module")
def synthetic():
    return SyntheticSource(16, seed=3)


def test_task_batches(synthetic):
    shapes = {
        "mae": {"image": (4, 224, 224, 1)},
        "waveform": {"waveform": (4, 3001, 3)},
        "picking": {"waveform": (4, 3001, 3), "labels": (4, 3001, 3), "p_sample": (4,), "s_sample": (4,)},
        "paired": {
            "image": (4, 224, 224, 1),
            "waveform": (4, 3001, 3),
            "p_sample": (4,),
            "s_sample": (4,),
            "depth_km": (4,),
            "distance_km": (4,),
            "magnitude": (4,),
        },
    }
    for task, expected in shapes.items():
        batch = next(iter(make_dataset(synthetic, task=task, batch_size=4, seed=0, augment=True)))
        assert {k: v.shape for k, v in batch.items()} == expected, task
        for key in ("image", "waveform", "labels"):
            if key in batch:
                assert batch[key].dtype == np.float32 and np.isfinite(batch[key]).all()
    batch = next(iter(make_dataset(synthetic, task="picking", batch_size=4, seed=0, shuffle=False)))
    for b in range(4):
        ex = synthetic[b]
        assert int(np.argmax(batch["labels"][b, :, 0])) == int(ex["p_sample"])
        assert int(np.argmax(batch["labels"][b, :, 1])) == int(ex["s_sample"])
        np.testing.assert_allclose(batch["labels"][b].sum(-1)[: int(ex["p_sample"]) - 100], 1.0)
    img = next(iter(make_dataset(synthetic, task="mae", batch_size=2, seed=0, shuffle=False)))["image"]
    np.testing.assert_allclose(img.mean(axis=(1, 2, 3)), 0, atol=1e-5)  # SFM z-score per image


def test_deterministic_for_a_seed():
    src = _tagged_source()
    a = _take(iter(make_dataset(src, task="paired", batch_size=4, seed=5, augment=True)), 3)
    b = _take(iter(make_dataset(src, task="paired", batch_size=4, seed=5, augment=True)), 3)
    c = _take(iter(make_dataset(src, task="paired", batch_size=4, seed=6, augment=True)), 3)
    assert _same(a, b) and not _same(a, c)


def test_shards_partition_the_data_and_epochs_reshuffle():
    src = _tagged_source(24)
    kw = dict(task="paired", batch_size=4, seed=1, num_epochs=1, shard_count=3)
    shards = [_ids(make_dataset(src, shard_index=i, **kw), 2) for i in range(3)]
    assert sorted(sum(shards, [])) == list(range(24))
    assert all(i % 3 == s for s, ids in enumerate(shards) for i in ids)
    two_epochs = _ids(make_dataset(src, task="paired", batch_size=4, seed=1, num_epochs=2), 12)
    first, second = two_epochs[:24], two_epochs[24:]
    assert sorted(first) == sorted(second) == list(range(24)) and first != second
    default = _ids(make_dataset(src, task="paired", batch_size=4, seed=1, num_epochs=1), 6)
    assert sorted(default) == list(range(24))  # one JAX process: the whole source
    with pytest.raises(ValueError, match="shard_index"):
        make_dataset(src, task="paired", batch_size=4, shard_index=3, shard_count=3)
    with pytest.raises(ValueError, match="unknown task"):
        make_dataset(src, task="denoise", batch_size=4)


def test_iterator_state_restores_exactly():
    ds = make_dataset(_tagged_source(), task="paired", batch_size=4, seed=2, augment=True)
    it = iter(ds)
    _take(it, 7)  # crosses an epoch boundary (24 examples = 6 batches)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 4)
    restored = iter(ds)
    restored.set_state(state)
    assert _same(_take(restored, 4), expected)


def test_workers_give_the_same_batches_and_restore(synthetic):
    single = make_dataset(synthetic, task="mae", batch_size=2, seed=4)
    multi = make_dataset(synthetic, task="mae", batch_size=2, seed=4, num_workers=2)
    reference = _take(iter(single), 4)
    it = iter(multi)
    assert _same(_take(it, 2), reference[:2])
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 2)
    assert _same(expected, reference[2:])
    restored = iter(multi)
    restored.set_state(state)
    assert _same(_take(restored, 2), expected)


def test_tfds_array_record_builder_reads_back_through_grain(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from seisfuse.data import tfds_builders  # noqa: F401  (registers the builder)
    from seisfuse.data.synthetic import generate_pair

    builder = tfds.builder(
        "seisfuse_synthetic_pairs/tiny", data_dir=str(tmp_path), file_format="array_record"
    )
    builder.download_and_prepare()
    train = tfds.data_source(
        "seisfuse_synthetic_pairs/tiny", split="train", data_dir=str(tmp_path), download=False
    )
    val = tfds.data_source(
        "seisfuse_synthetic_pairs/tiny", split="validation", data_dir=str(tmp_path), download=False
    )
    assert (len(train), len(val)) == (8, 4)
    stored = {tuple(train[i]["waveform"][:4, 0]) for i in range(8)}
    assert stored == {tuple(generate_pair(0, i)["waveform"][:4, 0]) for i in range(8)}
    assert tuple(val[0]["waveform"][:4, 0]) in {
        tuple(generate_pair(0, i)["waveform"][:4, 0]) for i in range(8, 12)
    }
    ex = train[0]
    match = next(i for i in range(8) if np.array_equal(generate_pair(0, i)["waveform"], ex["waveform"]))
    ref = generate_pair(0, match)
    for key in ("image", "clean", "reflectivity", "trace_mask", "facies", "salt"):
        np.testing.assert_array_equal(ex[key], ref[key])
    batch = next(iter(make_dataset(train, task="paired", batch_size=4, seed=0)))
    assert batch["image"].shape == (4, 224, 224, 1) and batch["depth_km"].dtype == np.float32


def test_paired_p_window_cuts_around_the_pick_after_augmentation(synthetic):
    from seisfuse.data import transforms

    for augment in (False, True):
        batch = next(iter(make_dataset(synthetic, task="paired", batch_size=4, seed=0, shuffle=False,
                                       augment=augment, p_window=(50, 512))))
        assert batch["waveform"].shape == (4, 512, 3)
        assert np.all(batch["p_sample"] == 50)
        assert np.all(batch["s_sample"] - batch["p_sample"]
                      == [int(synthetic[b]["s_sample"]) - int(synthetic[b]["p_sample"]) for b in range(4)])
    plain = next(iter(make_dataset(synthetic, task="paired", batch_size=4, seed=0, shuffle=False,
                                   p_window=(50, 512))))
    for b in range(4):
        ex = synthetic[b]
        expected = transforms.normalize_waveform(transforms.p_window(ex["waveform"], ex["p_sample"], 50, 512))
        np.testing.assert_allclose(plain["waveform"][b], expected, atol=1e-6)


def test_p_window_keeps_a_missing_s_pick_missing():
    source = _tagged_source(4)
    source.arrays["p_sample"] = np.full(4, 1000, np.int32)
    source.arrays["s_sample"] = np.array([1400, -1, 1600, -1], np.int32)
    batch = next(iter(make_dataset(source, task="paired", batch_size=4, seed=0, shuffle=False,
                                   p_window=(50, 512))))
    assert batch["p_sample"].tolist() == [50, 50, 50, 50]
    assert batch["s_sample"].tolist() == [450, -1, 650, -1]
