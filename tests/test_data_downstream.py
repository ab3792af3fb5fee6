"""Fine-tuning data: the segment / regress / picking / classify batches, their normalisations and
augmentations, SFM's .dat task folders, pick tables of obspy records, and the source factory."""

import json
import pickle

import numpy as np
import pytest

from seisfuse.data import transforms as tf
from seisfuse.data.pipeline import EVAL_INDEX_OFFSET, ArraySource, SyntheticSource, make_dataset
from seisfuse.data.readers import SeismicDataError
from seisfuse.data.sources import PickTableSource, SFMTaskSource, make_source
from seisfuse.data.synthetic import generate_pair


@pytest.fixture(scope="module")
def pairs():
    """Four generated pairs held in memory (the generator is the slow part)."""
    examples = [generate_pair(5, i) for i in range(4)]
    return examples, ArraySource(**{k: np.stack([ex[k] for ex in examples]) for k in examples[0]})


def _first(source, **kw):
    return next(iter(make_dataset(source, batch_size=4, seed=0, shuffle=False, **kw)))


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k], equal_nan=True) for k in x)
               for x, y in zip(a, b, strict=True))


def test_every_task_batch_from_synthetic_data(pairs):
    examples, source = pairs
    seg = _first(source, task="segment", label_key="facies")
    assert seg["image"].shape == (4, 224, 224, 1) and seg["image"].dtype == np.float32
    assert seg["label"].shape == (4, 224, 224) and seg["label"].dtype == np.int32
    np.testing.assert_array_equal(seg["label"], [ex["facies"] for ex in examples])
    np.testing.assert_allclose(seg["image"].mean(axis=(1, 2, 3)), 0, atol=1e-5)
    salt = _first(source, task="segment", label_key="salt")["label"]
    assert set(np.unique(salt)) <= {0, 1}

    for key in ("clean", "reflectivity", "image"):
        batch = _first(source, task="regress", label_key=key)
        assert set(batch) == {"image", "target"}
        assert batch["target"].shape == (4, 224, 224, 1) and batch["target"].dtype == np.float32
    denoise = _first(source, task="regress", label_key="clean")
    for b, ex in enumerate(examples):  # one scale for both: input − target is the scaled noise
        scale = ex["image"].std() + 1e-6
        np.testing.assert_allclose(denoise["image"][b] - denoise["target"][b],
                                   (ex["image"] - ex["clean"]) / scale, atol=1e-4)
    refl = _first(source, task="regress", label_key="reflectivity")["target"]
    np.testing.assert_allclose(refl.std(axis=(1, 2, 3)), 1, atol=1e-3)  # SFM z-scores the target too
    interp = _first(source, task="regress", label_key="image")
    np.testing.assert_array_equal(interp["image"], interp["target"])

    pick = _first(source, task="picking")
    assert pick["p_sample"].dtype == pick["s_sample"].dtype == np.float32
    np.testing.assert_array_equal(pick["p_sample"], [ex["p_sample"] for ex in examples])
    np.testing.assert_array_equal(pick["s_sample"], [ex["s_sample"] for ex in examples])

    for key, meta, edges in (("distance_class", "distance_km", tf.DISTANCE_EDGES_KM),
                             ("magnitude_class", "magnitude", tf.MAGNITUDE_EDGES)):
        batch = _first(source, task="classify", label_key=key)
        assert batch["waveform"].shape == (4, 3001, 3) and batch["label"].dtype == np.int32
        expected = [int(np.digitize(float(ex[meta]), edges[1:-1])) for ex in examples]
        assert batch["label"].tolist() == expected


def test_class_bins_edges_and_bad_labels():
    assert tf.class_label({"distance_km": 2.0}, "distance_class") == 0
    assert tf.class_label({"distance_km": 6.5}, "distance_class") == 1
    assert tf.class_label({"distance_km": 20.0}, "distance_class") == 3
    assert tf.class_label({"magnitude": 0.74}, "magnitude_class") == 0
    assert tf.class_label({"magnitude": 0.76}, "magnitude_class") == 1
    with pytest.raises(ValueError, match="outside"):
        tf.class_label({"distance_km": 45.0}, "distance_class")
    with pytest.raises(ValueError, match="lacks"):
        tf.class_label({"depth_km": 4.0}, "magnitude_class")
    with pytest.raises(ValueError, match="integer >= 0"):
        tf.class_label({"label": 1.5}, "label")
    assert tf.class_label({"label": np.float32(3)}, "label") == 3


def test_labelled_tasks_need_a_known_label_key(pairs):
    _, source = pairs
    with pytest.raises(ValueError, match="needs label_key"):
        make_dataset(source, task="segment", batch_size=2)
    with pytest.raises(ValueError, match="regress label_key 'facies'"):
        make_dataset(source, task="regress", batch_size=2, label_key="facies")
    with pytest.raises(ValueError, match="no 'label'"):
        _first(source, task="segment", label_key="label")


def test_augmented_label_maps_flip_with_their_images(pairs):
    examples, source = pairs
    flipped = 0
    for seed in range(4):
        it = iter(make_dataset(source, task="segment", label_key="facies", batch_size=4, seed=seed,
                               shuffle=False, augment=True))
        seg = next(it)
        reg = next(iter(make_dataset(source, task="regress", label_key="reflectivity", batch_size=4,
                                     seed=seed, shuffle=False, augment=True)))
        for b, ex in enumerate(examples):
            image, facies = tf.zscore_image(ex["image"]), ex["facies"]
            if np.array_equal(seg["label"][b], facies):
                np.testing.assert_allclose(seg["image"][b], image, atol=1e-6)
                np.testing.assert_allclose(reg["target"][b], tf.zscore_image(ex["reflectivity"]), atol=1e-6)
            else:
                flipped += 1
                np.testing.assert_array_equal(seg["label"][b], facies[:, ::-1])
                np.testing.assert_allclose(seg["image"][b], image[:, ::-1], atol=1e-6)
                np.testing.assert_allclose(reg["target"][b], tf.zscore_image(ex["reflectivity"])[:, ::-1],
                                           atol=1e-6)
    assert 0 < flipped < 16


def test_seislm_pick_window_cuts_around_a_pick_then_anywhere():
    rng = np.random.default_rng(0)
    record = np.zeros((60000, 3), np.float32)
    record[30000, 0], record[30600, 1] = 1.0, 2.0
    near = 0
    for _ in range(300):
        out, picks = tf.seislm_pick_window(record, {"p": 30000.0, "s": 30600.0}, rng)
        assert out.shape == (3001, 3)
        p, s = picks["p"], picks["s"]
        assert s - p == 600  # picks move with the data
        if 0 <= p < 3001:
            assert out[int(p), 0] == 1.0
        near += -600 <= p <= 3000  # what a cut around P or S allows; 7 % of whole-record windows
    # 2/3 of the windows come from a 6000-sample cut around P or S, the rest from the whole record.
    assert 0.6 < near / 300 < 0.78
    short, picks = tf.seislm_pick_window(record[29900:30100], {"p": 100.0, "s": np.nan}, rng)
    assert short.shape == (3001, 3) and short.sum() == 1.0 and short[int(picks["p"]), 0] == 1.0
    assert np.isnan(picks["s"])


def test_fill_dead_channels_copies_a_live_one():
    rng = np.random.default_rng(1)
    w = np.zeros((100, 3), np.float32)
    w[:, 1] = np.arange(100)
    out = tf.fill_dead_channels(w, rng)
    np.testing.assert_array_equal(out, np.repeat(w[:, 1:2], 3, axis=1))
    assert tf.fill_dead_channels(np.zeros((10, 3)), rng).sum() == 0


def test_picking_reports_in_window_picks_and_missing_ones():
    w = np.random.default_rng(2).normal(size=(3, 5000, 3)).astype(np.float32)
    source = ArraySource(waveform=w, p_sample=np.array([1200.0, 4000.0, -1.0], np.float32),
                         s_sample=np.array([np.nan, 4500.0, 2000.0], np.float32))
    batch = next(iter(make_dataset(source, task="picking", batch_size=3, seed=0, shuffle=False)))
    p, s = batch["p_sample"], batch["s_sample"]
    assert np.isnan(s[0]) and np.isnan(p[2])  # NaN and -1 both mean absent
    assert 100 <= p[0] < 2901 and int(np.argmax(batch["labels"][0, :, 0])) == round(float(p[0]))
    assert s[1] - p[1] == 500
    assert np.all(batch["labels"][0, :, 1] == 0)
    aug = _take(make_dataset(source, task="picking", batch_size=3, seed=0, augment=True), 12)
    picks = np.concatenate([np.stack([b["p_sample"], b["s_sample"]]) for b in aug], axis=1)
    inside = np.isfinite(picks)
    assert np.all((picks[inside] >= 0) & (picks[inside] < 3001))
    assert (~inside).sum() > 2 * 12  # beyond the two absent picks per batch: picks the window left out
    assert all(np.isfinite(b["waveform"]).all() for b in aug)


def test_same_batches_whatever_the_workers_and_exact_restore(pairs):
    _, source = pairs
    kw = dict(task="picking", batch_size=2, seed=4, augment=True)
    reference = _take(make_dataset(source, **kw), 4)
    multi = make_dataset(source, num_workers=2, **kw)
    it = iter(multi)
    assert _same([next(it), next(it)], reference[:2])
    state = json.loads(json.dumps(it.get_state()))
    assert _same([next(it), next(it)], reference[2:])
    restored = iter(multi)
    restored.set_state(state)
    assert _same([next(restored), next(restored)], reference[2:])
    seg = dict(task="segment", label_key="salt", batch_size=2, seed=1, augment=True)
    assert _same(_take(make_dataset(source, **seg), 3), _take(make_dataset(source, **seg), 3))


# ----------------------------------------------------------------------------- SFM .dat folders


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.asarray(array, "<f4").tofile(path)


def test_sfm_facies_folder_reads_back_through_the_pipeline(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.normal(3.0, 2.0, (5, 16, 16)).astype(np.float32)
    labels = rng.integers(1, 7, (5, 16, 16)).astype(np.float32)  # SFM stores facies 1..6
    for i in range(5):
        _write(tmp_path / "seismic" / f"{i}.dat", images[i])
        _write(tmp_path / "label" / f"{i}.dat", labels[i])
    train = SFMTaskSource(tmp_path, "train", "SEAM", 16, train_count=3)
    val = SFMTaskSource(tmp_path, "val", "facies", 16, train_count=3)
    assert (len(train), len(val), train.num_classes, train.label_key) == (3, 2, 6, "label")
    np.testing.assert_array_equal(val[1]["image"][..., 0], images[4])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(val))[1]["label"], val[1]["label"])  # workers
    batch = next(iter(make_dataset(train, task="segment", batch_size=3, seed=0, shuffle=False)))
    np.testing.assert_array_equal(batch["label"], labels[:3] - 1)  # label_key from the source
    np.testing.assert_allclose(batch["image"][0], tf.zscore_image(images[0][..., None]), atol=1e-6)
    with pytest.raises(SeismicDataError, match="no val files"):
        SFMTaskSource(tmp_path, "val", "facies", 16)  # SFM's cut: files 0..99 train


def test_sfm_regression_folders_and_their_targets(tmp_path):
    rng = np.random.default_rng(4)
    noisy, clean, field = (rng.normal(size=(2, 8, 8)).astype(np.float32) for _ in range(3))
    for i in range(2):
        _write(tmp_path / "dn" / "seismic" / f"{i}.dat", noisy[i])
        _write(tmp_path / "dn" / "label" / f"{i}.dat", clean[i])
        _write(tmp_path / "dn" / "field" / f"{i}.dat", field[i])
        _write(tmp_path / "rf" / "seismic" / f"{i}.dat", noisy[i])
        _write(tmp_path / "rf" / "label" / f"{i}.dat", clean[i])
        _write(tmp_path / "rf" / "SEAMseismic" / f"{i}.dat", field[i])
        _write(tmp_path / "rf" / "SEAMreflect" / f"{i}.dat", clean[i])
        _write(tmp_path / "ip" / f"{i}.dat", noisy[i])
        _write(tmp_path / "ip" / f"U{2000 + i}.dat", field[i])
    dn = SFMTaskSource(tmp_path / "dn", "train", "denoise", 8)
    np.testing.assert_array_equal(dn[1]["clean"][..., 0], clean[1])
    field_val = SFMTaskSource(tmp_path / "dn", "val", "Denoise", 8)[0]  # field data: its own target
    np.testing.assert_array_equal(field_val["clean"], field_val["image"])
    rf = SFMTaskSource(tmp_path / "rf", "val", "Reflection", 8)  # SFM's name for reflectivity
    assert rf.label_key == "reflectivity" and rf.num_classes is None
    np.testing.assert_array_equal(rf[0]["reflectivity"][..., 0], clean[0])
    ip = SFMTaskSource(tmp_path / "ip", "val", "interpolation", 8)
    assert len(ip) == 2 and set(ip[0]) == {"image"}
    np.testing.assert_array_equal(ip[1]["image"][..., 0], field[1])
    assert len(SFMTaskSource(tmp_path / "ip", "train", "interpolation", 8)) == 2
    batch = next(iter(make_dataset(dn, task="regress", batch_size=2, seed=0, shuffle=False)))
    scale = noisy[0].std() + 1e-6
    np.testing.assert_allclose(batch["image"][0, ..., 0] - batch["target"][0, ..., 0],
                               (noisy[0] - clean[0]) / scale, atol=1e-5)


def test_sfm_folder_errors_name_the_file(tmp_path):
    for i in range(3):
        _write(tmp_path / "seismic" / f"{i}.dat", np.zeros((8, 8)))
        _write(tmp_path / "label" / f"{i}.dat", np.ones((8, 8)))
    (tmp_path / "label" / "2.dat").unlink()
    with pytest.raises(SeismicDataError, match=r"label/2\.dat is missing"):
        SFMTaskSource(tmp_path, "train", "salt", 8)
    _write(tmp_path / "label" / "2.dat", np.full((8, 8), 2.0))  # not a salt class
    with pytest.raises(SeismicDataError, match=r"wrong size"):
        SFMTaskSource(tmp_path, "train", "salt", 16)
    salt = SFMTaskSource(tmp_path, "train", "salt", 8)
    assert salt[0]["label"].sum() == 64
    with pytest.raises(SeismicDataError, match=r"label/2\.dat: label values \[2\.0\]"):
        salt[2]
    _write(tmp_path / "label" / "1.dat", np.ones(10))
    with pytest.raises(SeismicDataError, match=r"label/1\.dat: 40 bytes"):
        SFMTaskSource(tmp_path, "train", "salt", 8)
    (tmp_path / "seismic" / "1.dat").unlink()
    with pytest.raises(SeismicDataError, match=r"seismic/1\.dat is missing"):
        SFMTaskSource(tmp_path, "train", "salt", 8)
    with pytest.raises(ValueError, match="unknown SFM task"):
        SFMTaskSource(tmp_path, "train", "faults", 8)


# ----------------------------------------------------------------------------- pick tables


def _record(path, start, npts=3100, seed=0):
    import obspy

    rng = np.random.default_rng(seed)
    traces = [obspy.Trace(rng.normal(size=npts).astype(np.float32),
                          header={"network": "XX", "station": "STA", "channel": f"HH{c}",
                                  "sampling_rate": 100.0, "starttime": start}) for c in "ZNE"]
    obspy.Stream(traces).write(str(path), format="MSEED")
    return traces


def test_pick_table_of_miniseed_records(tmp_path):
    from obspy import UTCDateTime

    start = UTCDateTime("2024-05-01T12:00:00")
    traces = _record(tmp_path / "a.mseed", start)
    (tmp_path / "sub").mkdir()
    _record(tmp_path / "sub" / "b.mseed", start, seed=1)
    (tmp_path / "picks.csv").write_text(
        "file,p_time,s_time,comment\n"
        "a.mseed,2024-05-01T12:00:03.25,14.5,absolute P and relative S\n"
        "sub/b.mseed,,40.0,no P and an S after the window\n")
    source = PickTableSource(tmp_path / "picks.csv")
    a, b = source[0], source[1]
    assert a["waveform"].shape == (3001, 3) and a["waveform"].dtype == np.float32
    np.testing.assert_allclose(a["waveform"][:, 0], traces[0].data[:3001])
    assert (float(a["p_sample"]), float(a["s_sample"])) == (325.0, 1450.0)
    assert np.isnan(b["p_sample"]) and np.isnan(b["s_sample"])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[0]["waveform"], a["waveform"])
    batch = next(iter(make_dataset(source, task="picking", batch_size=2, seed=0, shuffle=False)))
    assert batch["p_sample"][0] == 325.0 and int(np.argmax(batch["labels"][0, :, 1])) == 1450


def test_pick_table_missing_and_corrupt_files_named_or_skipped(tmp_path):
    from obspy import UTCDateTime

    _record(tmp_path / "good.mseed", UTCDateTime(0))
    (tmp_path / "bad.mseed").write_bytes(b"not a seismogram" * 10)
    table = tmp_path / "t.csv"
    table.write_text("file,p_time,s_time\ngood.mseed,3.0,\ngone.mseed,1.0,\nbad.mseed,2.0,\n")
    with pytest.raises(SeismicDataError, match=r"line 3: no waveform file .*gone\.mseed"):
        PickTableSource(table)
    table.write_text("file,p_time,s_time\ngood.mseed,3.0,\nbad.mseed,2.0,\n")
    with pytest.raises(SeismicDataError, match=r"line 3 \(.*bad\.mseed\)"):
        PickTableSource(table)[1]
    table.write_text("file,p_time,s_time\ngood.mseed,3.0,\ngone.mseed,1.0,\nbad.mseed,2.0,\n")
    kept = PickTableSource(table, skip_bad=True)
    assert len(kept) == 1 and [line for line, _ in kept.skipped] == [3, 4]
    assert float(kept[0]["p_sample"]) == 300.0
    table.write_text("file,p_time\ngood.mseed,3.0\n")
    with pytest.raises(SeismicDataError, match=r"missing columns \['s_time'\]"):
        PickTableSource(table)
    table.write_text("file,p_time,s_time\ngood.mseed,soon,\n")
    with pytest.raises(SeismicDataError, match="line 2 p_time: pick time 'soon'"):
        PickTableSource(table)


def test_record_table_with_event_classes_feeds_the_classify_task(tmp_path):
    from obspy import UTCDateTime

    _record(tmp_path / "a.mseed", UTCDateTime(0))
    _record(tmp_path / "b.mseed", UTCDateTime(0), seed=1)
    table = tmp_path / "events.csv"
    table.write_text("file,p_time,s_time,label\na.mseed,3.0,,2\nb.mseed,,,0\n")
    source = PickTableSource(table)
    assert [int(source[i]["label"]) for i in range(2)] == [2, 0]
    batch = next(iter(make_dataset(source, task="classify", batch_size=2, seed=0, shuffle=False,
                                   label_key="label")))
    assert batch["label"].tolist() == [2, 0] and batch["waveform"].shape == (2, 3001, 3)
    table.write_text("file,p_time,s_time,label\na.mseed,3.0,,foreshock\n")
    with pytest.raises(SeismicDataError, match="line 2: label 'foreshock' is not a class id"):
        PickTableSource(table)


# ----------------------------------------------------------------------------- make_source


def test_make_source_splits_and_errors(tmp_path):
    train = make_source({"source": "synthetic", "num_examples": 3, "dataset_seed": 7})
    held = make_source({"source": "synthetic", "num_examples": 3, "dataset_seed": 7, "eval_examples": 2},
                       split="eval")
    assert (len(train), len(held)) == (3, 2)
    assert (train.seed, train.offset, held.seed, held.offset) == (7, 0, 7, EVAL_INDEX_OFFSET)
    np.testing.assert_array_equal(held[1]["waveform"], generate_pair(7, EVAL_INDEX_OFFSET + 1)["waveform"])
    with pytest.raises(ValueError, match="reach the held-out"):
        SyntheticSource(EVAL_INDEX_OFFSET + 1)
    with pytest.raises(ValueError, match=r"unknown data source 'hdf5'.*'synthetic', 'dat'"):
        make_source({"source": "hdf5"})
    with pytest.raises(ValueError, match=r"needs data\.num_examples"):
        make_source({"source": "synthetic"})
    with pytest.raises(ValueError, match=r"needs data\.task"):
        make_source({"source": "dat", "path": str(tmp_path)})
    with pytest.raises(ValueError, match=r"needs data\.eval_examples"):
        make_source({"source": "synthetic", "num_examples": 3}, split="eval")
    with pytest.raises(ValueError, match=r"needs data\.eval_path"):
        make_source({"source": "pick_table", "path": "t.csv"}, split="eval")
    with pytest.raises(ValueError, match=r"splits \('train', 'dev', 'test', 'eval'\), got 'val'"):
        make_source({"source": "seisbench", "path": str(tmp_path), "split": "val"})
    for i in range(2):
        _write(tmp_path / "seismic" / f"{i}.dat", np.zeros((4, 4)))
        _write(tmp_path / "label" / f"{i}.dat", np.zeros((4, 4)))
    dat = {"source": "dat", "path": str(tmp_path), "task": "salt", "size": 4, "train_count": 1}
    assert make_source(dat).split == "train" and make_source(dat, split="eval").split == "val"
