"""`seisfuse pick` machinery: windows over long records, SeisBench-style stacking and triggers, and
files → pick CSV, with a fake picker whose output depends only on what each window shows."""

import csv
import warnings

import numpy as np
import obspy
import pytest
from obspy import Stream, Trace, UTCDateTime
from obspy.signal.trigger import trigger_onset

from seisfuse.data.readers import SeismicDataError
from seisfuse.eval import pick as pk

T0 = UTCDateTime(2024, 3, 1, 12, 0, 0)
SPIKE = 1e4  # planted onsets: spikes far above unit noise
SIGMA = 10.0


def spike_picker(windows: np.ndarray) -> np.ndarray:
    """A 'model' that sees P as a spike on Z and S as a spike on N, anywhere in the window it is
    given, and answers Gaussians around them; it knows nothing of absolute positions, so planted
    picks only come out right if the windows and the stacking put them back."""
    n, length, _ = windows.shape
    t = np.arange(length)
    out = np.zeros((n, length, 3), np.float32)
    for i, w in enumerate(windows):
        for phase, comp in ((0, 0), (1, 1)):
            x = np.abs(w[:, comp])
            padded = np.concatenate([[-np.inf], x, [-np.inf]])
            peaks = np.flatnonzero((x > 20) & (x > padded[:-2]) & (x >= padded[2:]))
            for p in peaks:
                out[i, :, phase] = np.maximum(out[i, :, phase], np.exp(-0.5 * ((t - p) / SIGMA) ** 2))
    out[..., 2] = np.clip(1 - out[..., 0] - out[..., 1], 0, 1)
    return out


def planted(length: int, p: list[int], s: list[int], seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).normal(size=(length, 3))
    w[p, 0] += SPIKE
    w[s, 1] += SPIKE
    return w.astype(np.float32)


def _zne_stream(waveform: np.ndarray, station: str, start=T0, rate: float = 100.0, comps="ZNE") -> Stream:
    return Stream([
        Trace(np.ascontiguousarray(waveform[:, k]).astype(np.float32),
              header={"network": "XX", "station": station, "channel": f"HH{c}",
                      "sampling_rate": rate, "starttime": start})
        for k, c in enumerate(comps)
    ])


# ----------------------------------------------------------------------------- windows, stacking, triggers


def test_window_starts_cover_the_record_with_the_last_one_at_the_end():
    np.testing.assert_array_equal(pk.window_starts(10_000), [0, 1500, 3000, 4500, 6000, 6999])
    np.testing.assert_array_equal(pk.window_starts(3001), [0])
    np.testing.assert_array_equal(pk.window_starts(4501), [0, 1500])  # 1500 + 3001 = 4501 ends it
    x = np.arange(5000 * 3, dtype=np.float32).reshape(5000, 3)
    windows, starts = pk.sliding_windows(x, stride=1000)
    np.testing.assert_array_equal(starts, [0, 1000, 1999])
    np.testing.assert_array_equal(windows[2], x[1999:])
    with pytest.raises(SeismicDataError, match="3000 samples is shorter than one 3001-sample window"):
        pk.window_starts(3000)
    with pytest.raises(ValueError, match="leave samples no window sees"):
        pk.window_starts(10_000, stride=3002)


def test_stacking_avg_max_and_blinding():
    probs = np.array([0.2, 0.6, 0.4])[:, None, None] * np.ones((3, 4, 1))  # windows of 4 samples
    starts = [0, 2, 4]  # samples 2-3 and 4-5 are seen twice
    avg = pk.stack_probabilities(probs, starts, 8, "avg")[:, 0]
    np.testing.assert_allclose(avg, [0.2, 0.2, 0.4, 0.4, 0.5, 0.5, 0.4, 0.4], rtol=1e-6)
    mx = pk.stack_probabilities(probs, starts, 8, "max")[:, 0]
    np.testing.assert_allclose(mx, [0.2, 0.2, 0.6, 0.6, 0.6, 0.6, 0.4, 0.4], rtol=1e-6)
    blind = pk.stack_probabilities(probs, starts, 8, "avg", blinding=(1, 1))[:, 0]
    np.testing.assert_allclose(blind, [np.nan, 0.2, 0.2, 0.6, 0.6, 0.4, 0.4, np.nan], rtol=1e-6)
    with pytest.raises(ValueError, match="'avg' or 'max'"):
        pk.stack_probabilities(probs, starts, 8, "mean")


@pytest.mark.parametrize("method", ["avg", "max"])
def test_stacking_matches_seisbench(method):
    utils = pytest.importorskip("seisbench.ext.utils")
    rng = np.random.default_rng(1)
    probs = rng.random((5, 50, 3)).astype(np.float32)
    probs[rng.random(probs.shape) < 0.2] = np.nan  # SeisBench's blinding marks
    starts = pk.window_starts(170, 50, 30)
    ref = utils.stack_windows(probs, starts.astype(np.intp), method=method)
    np.testing.assert_allclose(pk.stack_probabilities(probs, starts, 170, method), ref, rtol=1e-6)


def test_find_picks_match_obspy_trigger_onset_as_seisbench_uses_it():
    rng = np.random.default_rng(2)
    curve = np.convolve(rng.random(3000) ** 8, np.ones(25) / 5, mode="same").clip(0, 1)
    curve[:3] = 0.9  # a trigger on at the first sample
    curve[-2:] = 0.9  # and one still on at the last
    picks = pk.find_picks(curve, 0.3, 100.0, phase="S", start_time=T0)
    ref = trigger_onset(curve, 0.3, 0.15)
    assert len(picks) == len(ref) > 5
    for got, (on, off) in zip(picks, ref, strict=True):
        assert (got.start, got.end) == (on, off)
        assert got.sample == on + np.argmax(curve[on : off + 1])
        assert got.probability == pytest.approx(curve[got.sample])
        assert got.time == T0 + got.sample / 100.0 and got.phase == "S"
    curve[picks[1].sample] = np.nan  # blinded/uncovered samples never trigger
    assert pk.find_picks(np.full(10, np.nan), 0.3)[:1] == []
    assert pk.find_picks(curve, 0.3)[0].time == pytest.approx(picks[0].sample / 100.0)


# ----------------------------------------------------------------------------- records


def test_long_record_gives_planted_picks_across_window_seams():
    p = [4, 1500, 3000, 6999, 9999]  # a window start, a window's last sample, the record's ends
    s = [1560, 4499, 8000]
    w = planted(10_000, p, s) * 3 + 50  # gain and offset: the picker sees normalised windows
    seen = []

    def predict(windows):
        seen.append(windows)
        return spike_picker(windows)

    picks = pk.pick_record(w, predict, start_time=T0, batch_size=4)
    assert [len(x) for x in seen] == [4, 2] and all(x.dtype == np.float32 for x in seen)
    np.testing.assert_allclose(seen[0].mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(seen[1].std(axis=1), 1, rtol=1e-4)
    assert [(x.phase, x.sample) for x in picks if x.phase == "P"] == [("P", i) for i in p]
    assert [x.sample for x in picks if x.phase == "S"] == s
    for x in picks:
        assert x.probability == pytest.approx(1.0, abs=1e-5)
        assert x.time == T0 + x.sample / 100.0
    assert [x.sample for x in picks] == sorted(x.sample for x in picks)
    only_s = pk.pick_record(w, spike_picker, thresholds={"S": 0.5}, stacking="max")
    assert [x.sample for x in only_s] == s and only_s[0].time == pytest.approx(15.6)


def test_avg_stacking_lowers_what_one_window_alone_sees_and_max_keeps_it():
    w = planted(4501, [2950], [])  # seen by window 0 (near its end) and window 1
    one_sided = {}

    def edge_shy(windows):  # a picker that trusts onsets near its window's end less
        out = spike_picker(windows)
        for i, win in enumerate(windows):
            if np.argmax(np.abs(win[:, 0])) > 2800:
                out[i, :, 0] *= 0.5
                one_sided[i] = True
        return out

    avg = pk.pick_record(w, edge_shy, stacking="avg")
    mx = pk.pick_record(w, edge_shy, stacking="max")
    assert one_sided == {0: True}
    assert avg[0].sample == mx[0].sample == 2950
    assert avg[0].probability == pytest.approx(0.75) and mx[0].probability == pytest.approx(1.0)


def test_bad_records_and_bad_predictions_are_refused():
    with pytest.raises(SeismicDataError, match="2999 samples is shorter"):
        pk.pick_record(np.zeros((2999, 3)), spike_picker)
    w = planted(4000, [100], [])
    w[7, 2] = np.nan
    with pytest.raises(SeismicDataError, match="1 NaN/inf"):
        pk.pick_record(w, spike_picker)
    with pytest.raises(SeismicDataError, match=r"\[T, 3\] in Z, N, E order"):
        pk.pick_record(np.zeros((4000, 2)), spike_picker)
    w = planted(4000, [100], [])
    with pytest.raises(ValueError, match="not logits"):
        pk.pick_record(w, lambda x: 5 * spike_picker(x) - 1)
    with pytest.raises(ValueError, match=r"expected \(2, 3001, 3\)"):
        pk.pick_record(w, lambda x: spike_picker(x)[:, :3000])
    with pytest.raises(ValueError, match="unknown phases"):
        pk.pick_record(w, spike_picker, thresholds={"Pn": 0.3})
    with pytest.raises(ValueError, match=r"P=1.5: thresholds must be in \(0, 1\]"):
        pk.pick_record(w, spike_picker, thresholds={"P": 1.5})
    two = _zne_stream(planted(4000, [100], []), "TWO", comps="ZN")
    with pytest.raises(SeismicDataError, match=r"a.mseed: station XX.TWO.: 2 component\(s\) \(ZN\)"):
        pk.station_records(two, source="a.mseed")


def test_gaps_split_a_station_into_records_on_one_sample_axis():
    w = planted(12_000, [3100, 6200, 9000], [])
    stream = _zne_stream(w[:6000], "GAP") + _zne_stream(w[6500:], "GAP", start=T0 + 65)
    stream += _zne_stream(w[:6000], "GAP").select(channel="HHZ")  # the same data twice: merged
    short = _zne_stream(w[:12_000], "GAP")
    short.select(channel="HHE")[0].data[6000:6100] = np.nan  # NaN in a component: refused
    with pytest.raises(SeismicDataError, match="src: station XX.GAP.: XX.GAP..HHE: 100 NaN/inf"):
        pk.station_records(short, source="src")
    records = pk.station_records(stream, source="src")
    assert [(r.offset, len(r.waveform), r.start_time) for r in records] == [
        (0, 6000, T0), (6500, 5500, T0 + 65)]
    np.testing.assert_array_equal(records[1].waveform, w[6500:])
    conflict = _zne_stream(w[:6000], "GAP") + _zne_stream(w[5000:6000] + 1, "GAP", start=T0 + 50, comps="Z")
    records = pk.station_records(conflict)  # overlapping data that differ are trusted in neither copy
    assert [(r.offset, len(r.waveform)) for r in records] == [(0, 5000)]
    cut = _zne_stream(w[:4000], "CUT") + _zne_stream(w[5000:7000], "CUT", start=T0 + 50)
    with pytest.warns(UserWarning, match="1 stretch.* shorter than a window .2000 samples"):
        assert len(pk.station_records(cut)) == 1
    with pytest.raises(SeismicDataError, match="no stretch of 3001 samples .* longest is 2000"):
        pk.station_records(_zne_stream(w[:2000], "S") + _zne_stream(w[2500:4500], "S", start=T0 + 25))


# ----------------------------------------------------------------------------- files → CSV


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_of_miniseed_files_to_pick_csv(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    a = planted(12_000, [3100, 6200, 9000], [3400], seed=3)  # 6200 falls in the gap below
    (_zne_stream(a[:6000], "AAA") + _zne_stream(a[6500:], "AAA", start=T0 + 65)).write(
        str(data / "XX.AAA.mseed"), format="MSEED")
    b = planted(5000, [2000], [2600], seed=4)
    for tr in _zne_stream(b, "BBB", start=T0 + 30):  # one record as three single-component files
        tr.write(str(data / f"{tr.id}.mseed"), format="MSEED")
    d = planted(2000, [1000], [], seed=5)  # 50 Hz: resampled, the P lands on 100 Hz sample 2000
    _zne_stream(d, "DDD", rate=50.0).write(str(data / "XX.DDD.mseed"), format="MSEED")
    _zne_stream(planted(4000, [100], []), "TWO", comps="ZN").write(str(data / "two.mseed"), format="MSEED")
    (data / "corrupt.mseed").write_bytes(b"\x00garbage" * 64)

    out = tmp_path / "picks.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the resampling RepairWarning
        summary = pk.pick_files([data], spike_picker, out)
    err = capsys.readouterr().err
    assert f"skipped {data / 'corrupt.mseed'}: " in err and "unreadable or corrupt" in err
    assert f"skipped {data / 'two.mseed'}: " in err and "2 component(s)" in err
    assert set(summary.failed) == {str(data / "corrupt.mseed"), str(data / "two.mseed")}
    assert len(summary.files_ok) == 5 and summary.stations == ["XX.AAA.", "XX.BBB.", "XX.DDD."]
    assert summary.picks == {"P": 4, "S": 2}

    rows = _rows(out)
    assert list(rows[0]) == list(pk.CSV_COLUMNS)
    bbb = ";".join(str(data / f"XX.BBB..HH{c}.mseed") for c in "ENZ")
    expected = [
        (str(data / "XX.AAA.mseed"), "XX.AAA.", "P", T0 + 31.0, 3100),
        (str(data / "XX.AAA.mseed"), "XX.AAA.", "S", T0 + 34.0, 3400),
        (str(data / "XX.AAA.mseed"), "XX.AAA.", "P", T0 + 90.0, 9000),
        (bbb, "XX.BBB.", "P", T0 + 50.0, 2000),
        (bbb, "XX.BBB.", "S", T0 + 56.0, 2600),
        (str(data / "XX.DDD.mseed"), "XX.DDD.", "P", T0 + 20.0, 2000),
    ]
    got = [(r["file"], r["station"], r["phase"], UTCDateTime(r["time"]), int(r["sample"])) for r in rows]
    assert got == expected
    assert all(float(r["probability"]) > 0.9 for r in rows)


def test_output_is_never_clobbered_nor_written_onto_an_input(tmp_path):
    rec = tmp_path / "rec.mseed"
    _zne_stream(planted(4000, [1000], []), "AAA").write(str(rec), format="MSEED")
    out = tmp_path / "picks.csv"
    out.write_text("keep me\n")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pk.pick_files([rec], spike_picker, out)
    assert out.read_text() == "keep me\n"
    with pytest.raises(ValueError, match="is one of the input files"):
        pk.pick_files([rec], spike_picker, rec, overwrite=True)
    assert len(obspy.read(str(rec))) == 3
    summary = pk.pick_files([rec, tmp_path / "gone.mseed"], spike_picker, out, overwrite=True)
    assert summary.failed == {str(tmp_path / "gone.mseed"): "no such file or folder"}
    assert [r["sample"] for r in _rows(out)] == ["1000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picks.csv", "rec.mseed"]  # no temp file left
    with pytest.raises(FileNotFoundError, match="output folder"):
        pk.pick_files([rec], spike_picker, tmp_path / "nope" / "picks.csv")
