"""Readers on files written by each format's own library, and on obspy's bundled real event."""

import pickle
import warnings

import numpy as np
import obspy
import pytest
import segyio

from seisfuse.data import readers as rd
from seisfuse.data.transforms import pick_labels

# ----------------------------------------------------------------------------- SEG-Y


@pytest.fixture()
def segy_file(tmp_path):
    traces = np.random.default_rng(0).normal(size=(500, 300)).astype(np.float32)  # [traces, samples]
    path = tmp_path / "line.sgy"
    segyio.tools.from_array2D(str(path), traces, dt=4000)
    return path, traces


def test_segy_section_and_patches(segy_file):
    path, traces = segy_file
    section = rd.read_segy(path)
    np.testing.assert_array_equal(section, traces.T)  # rows = samples, columns = traces
    patches = rd.segy_patches(section)
    assert patches.shape == (2, 224, 224, 1)  # 300 samples x 500 traces: 1 row x 2 columns
    np.testing.assert_allclose(patches.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(patches.std(axis=(1, 2, 3)), 1, atol=1e-4)
    np.testing.assert_allclose(patches[1, ..., 0], rd.segy_patches(section[:, 224:448])[0, ..., 0])
    assert rd.segy_patches(section, stride=38).shape == (3 * 8, 224, 224, 1)


def test_segy_bad_input(segy_file, tmp_path):
    path, traces = segy_file
    cut = tmp_path / "cut.sgy"
    cut.write_bytes(path.read_bytes()[:-700])
    with pytest.raises(rd.SeismicDataError, match="corrupt or truncated"):
        rd.read_segy(cut)
    junk = tmp_path / "junk.sgy"
    junk.write_bytes(b"not a segy file" * 20)
    with pytest.raises(rd.SeismicDataError, match="corrupt or truncated"):
        rd.read_segy(junk)
    bad = traces.copy()
    bad[3, 7] = np.nan
    segyio.tools.from_array2D(str(tmp_path / "nan.sgy"), bad)
    with pytest.raises(rd.SeismicDataError, match="1 NaN"):
        rd.read_segy(tmp_path / "nan.sgy")
    with pytest.raises(rd.SeismicDataError, match="smaller than a 224"):
        rd.segy_patches(np.zeros((100, 500)))
    with pytest.raises(FileNotFoundError):
        rd.read_segy(tmp_path / "missing.sgy")


def test_dat_patches(tmp_path):
    x = np.random.default_rng(1).normal(2, 3, (224, 224)).astype(np.float32)
    x.tofile(tmp_path / "0.dat")
    img = rd.read_dat(tmp_path / "0.dat")
    assert img.shape == (224, 224, 1)
    np.testing.assert_allclose(img[..., 0], (x - x.mean()) / (x.std() + 1e-6), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(rd.read_dat(tmp_path / "0.dat", zscore=False)[..., 0], x)
    x[:100].tofile(tmp_path / "short.dat")
    with pytest.raises(rd.SeismicDataError, match="truncated file or wrong shape"):
        rd.read_dat(tmp_path / "short.dat")
    x[5, 5] = np.inf
    x.tofile(tmp_path / "inf.dat")
    with pytest.raises(rd.SeismicDataError, match="NaN/inf"):
        rd.read_dat(tmp_path / "inf.dat")


# ----------------------------------------------------------------------------- obspy


@pytest.fixture()
def event():
    return obspy.read()  # BW.RJOB..EH[ZNE], 100 Hz, 3000 samples each


def _window(stream, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rd.RepairWarning)
        return rd.stream_to_window(stream, **kwargs)


def test_bundled_event_to_zne_window(event):
    with pytest.warns(rd.RepairWarning, match="zero-padded"):
        w = rd.stream_to_window(event)
    assert w.shape == (3001, 3) and w.dtype == np.float32
    for k, comp in enumerate("ZNE"):
        np.testing.assert_allclose(w[:3000, k], event.select(component=comp)[0].data, rtol=1e-6)
    assert np.all(w[3000] == 0)
    shuffled = obspy.Stream([event[2], event[0], event[1]])
    np.testing.assert_array_equal(_window(shuffled), w)


def test_miniseed_and_sac_files_written_by_obspy(event, tmp_path):
    event.write(str(tmp_path / "ev.mseed"), format="MSEED")
    ref = _window(event)
    np.testing.assert_allclose(_window(rd.read_stream(tmp_path / "ev.mseed")), ref, rtol=1e-6)
    for tr in event:
        tr.write(str(tmp_path / f"{tr.id}.sac"), format="SAC")
    sac = rd.read_stream(tmp_path / "*.sac")
    np.testing.assert_allclose(_window(sac), ref, rtol=1e-6)
    raw = (tmp_path / "ev.mseed").read_bytes()
    cut = tmp_path / "cut.mseed"
    cut.write_bytes(raw[: len(raw) // 2 + 100])  # ends inside a record: obspy only warns
    with pytest.raises(rd.SeismicDataError, match="truncated or corrupt"):
        rd.read_waveform(cut)
    cut.write_bytes(raw[:40_000])  # whole records missing: the window is not covered
    with pytest.raises(rd.SeismicDataError, match="EHN: 15.15 s .* do not cover the 30.01 s window"):
        rd.read_waveform(cut)
    junk = tmp_path / "junk.mseed"
    junk.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(rd.SeismicDataError, match="unreadable or corrupt"):
        rd.read_waveform(junk)


def test_resampling_and_wrong_rate(event):
    low = event.copy().resample(50.0)
    with pytest.raises(rd.SeismicDataError, match="sampling rate 50.0 Hz, expected 100 Hz"):
        rd.stream_to_window(low, resample=False)
    with pytest.warns(rd.RepairWarning, match="resampled 50.0 Hz"):
        w = rd.stream_to_window(low, length=2990, missing="raise")
    ref = event.copy().filter("lowpass", freq=20.0, zerophase=True)
    z = ref.select(component="Z")[0].data[100:2900]
    assert np.corrcoef(w[100:2900, 0], z)[0, 1] > 0.95


def test_z12_channels_map_to_zne(event):
    renamed = event.copy()
    for tr in renamed:
        tr.stats.channel = "EH" + {"Z": "Z", "N": "1", "E": "2"}[tr.stats.channel[-1]]
    np.testing.assert_array_equal(_window(renamed), _window(event))


def test_missing_and_dead_components(event):
    two = event.select(component="[ZN]")
    with pytest.raises(rd.SeismicDataError, match="fewer than 3 components, missing E"):
        _window(two, missing="raise")
    zeros = _window(two)
    assert np.all(zeros[:, 2] == 0) and np.any(zeros[:, 1] != 0)
    copied = _window(two, missing="copy")
    np.testing.assert_array_equal(copied[:, 2], copied[:, 0])
    dead = event.copy()
    dead.select(component="N")[0].data[:] = 0.0
    with pytest.warns(rd.RepairWarning, match="dead"):
        w = rd.stream_to_window(dead)
    assert np.all(w[:, 1] == 0)
    for tr in dead:
        tr.data[:] = 0.0
    with pytest.raises(rd.SeismicDataError, match="all components are missing or zero"):
        _window(dead)


def test_nan_short_and_ambiguous_streams(event):
    bad = event.copy()
    bad[1].data[10] = np.nan
    with pytest.raises(rd.SeismicDataError, match="BW.RJOB..EHN: 1 NaN"):
        rd.stream_to_window(bad)
    short = event.copy().trim(endtime=event[0].stats.starttime + 10)
    with pytest.raises(rd.SeismicDataError, match="do not cover"):
        rd.stream_to_window(short)
    two_stations = event.copy() + event.copy()
    for tr in two_stations[3:]:
        tr.stats.station = "OTHER"
    with pytest.raises(rd.SeismicDataError, match="several instruments"):
        rd.stream_to_window(two_stations)
    np.testing.assert_array_equal(_window(two_stations, instrument="BW.OTHER..EH"), _window(event))


# ----------------------------------------------------------------------------- SeisBench


@pytest.fixture(scope="module")
def seisbench_dir(tmp_path_factory):
    sbd = pytest.importorskip("seisbench.data")
    path = tmp_path_factory.mktemp("sb")
    rng = np.random.default_rng(5)
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as writer:
        writer.data_format = {
            "dimension_order": "CW",
            "component_order": "ZNE",
            "measurement": "velocity",
            "unit": "counts",
            "instrument_response": "not restituted",
        }
        writer.add_trace(
            {
                "trace_name": "a",
                "trace_sampling_rate_hz": 100.0,
                "split": "train",
                "trace_P_arrival_sample": 1200,
                "trace_S_arrival_sample": 2100.0,
            },
            rng.normal(size=(3, 6000)).astype(np.float32),
        )
        writer.add_trace(
            {
                "trace_name": "b",
                "trace_sampling_rate_hz": 50.0,
                "split": "train",
                "trace_Pg_arrival_sample": 700,
                "trace_S_arrival_sample": np.nan,
            },
            rng.normal(size=(3, 2000)).astype(np.float32),
        )
    return path


def test_seisbench_dataset_through_seisbench_classes(seisbench_dir):
    src = rd.SeisBenchSource(seisbench_dir)
    assert len(src) == 2
    a, b = src[0], src[1]
    assert a["waveform"].shape == (6000, 3) and a["waveform"].dtype == np.float32
    assert (a["p_sample"], a["s_sample"]) == (1200, 2100)
    assert b["waveform"].shape == (4000, 3)  # 50 Hz resampled to 100 Hz by seisbench
    assert b["p_sample"] == pytest.approx(1400) and np.isnan(b["s_sample"])
    labels = pick_labels(b["p_sample"], b["s_sample"], length=4000)
    assert labels[1400, 0] == pytest.approx(1.0) and np.all(labels[:, 1] == 0)
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[0]["waveform"], a["waveform"])
    assert len(rd.SeisBenchSource(seisbench_dir, split="train")) == 2


def test_seisbench_bad_directory(tmp_path):
    with pytest.raises(rd.SeismicDataError, match="not a SeisBench dataset"):
        rd.SeisBenchSource(tmp_path)
