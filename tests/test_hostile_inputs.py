"""Regression tests for what a hostile or careless user can hand seisfuse: checkpoint files built to
exhaust memory or recursion, damaged training checkpoints, unwritable directories, unusual but
valid seismic files, files cut short, and arrays no model should see."""

from __future__ import annotations

import collections
import encodings.cp437  # noqa: F401 - zipfile imports it on first use; the fuzz checks no import happens
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import obspy
import orbax.checkpoint as ocp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seisfuse.convert.torch_format import (
    CheckpointError,
    Placeholder,
    default_budget,
    read_torch_checkpoint,
    write_torch_checkpoint,
)

OBSPY = Path(obspy.__file__).parent
P = pickle


# ============================================================================ torch checkpoint reader


def _zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None,
         compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


def _tensor_pickle(size, stride, offset=0, numel=1, key="0") -> bytes:
    """The pickle torch writes for one float32 tensor, with any size/stride/offset/numel."""
    out = io.BytesIO()
    out.write(P.PROTO + b"\x02" + P.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + P.MARK + P.MARK)
    for value in ("storage",):
        out.write(pickle.dumps(value, 2)[2:-1])
    out.write(P.GLOBAL + b"torch\nFloatStorage\n")
    for value in (key, "cpu", numel):
        out.write(pickle.dumps(value, 2)[2:-1])
    out.write(P.TUPLE + P.BINPERSID)
    for value in (offset, tuple(size), tuple(stride), False):
        out.write(pickle.dumps(value, 2)[2:-1])
    out.write(P.EMPTY_DICT + P.TUPLE + P.REDUCE + P.STOP)
    return out.getvalue()


def _declare_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size a zip's central directory declares for `member`."""
    raw = bytearray(path.read_bytes())
    start = 0
    while (start := raw.find(b"PK\x01\x02", start)) >= 0:
        name_length = int.from_bytes(raw[start + 28:start + 30], "little")
        if raw[start + 46:start + 46 + name_length] == member.encode():
            raw[start + 24:start + 28] = size.to_bytes(4, "little")
            path.write_bytes(bytes(raw))
            return
        start += 4
    raise AssertionError(f"{member} not in {path}")


def _peak(fn):
    """(result or the exception raised, peak bytes allocated by Python/numpy while running fn)."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - the caller asserts which
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_stride0_broadcast_is_refused_before_anything_is_allocated(tmp_path):
    # 487 bytes that ask for a 10^6 x 10^6 float32 "broadcast" of one stored value (4 TB).
    path = _zip(tmp_path / "bcast.pth", _tensor_pickle((10**6, 10**6), (0, 0)), {"0": bytes(4)})
    assert os.path.getsize(path) < 1000
    err, peak = _peak(lambda: read_torch_checkpoint(path))
    assert isinstance(err, CheckpointError) and "budget" in str(err) and "max_bytes" in str(err)
    assert peak < 2**20
    small = _zip(tmp_path / "small.pth", _tensor_pickle((3, 2), (0, 1), numel=2),
                 {"0": np.array([1, 2], np.float32).tobytes()})
    np.testing.assert_array_equal(read_torch_checkpoint(small), [[1, 2]] * 3)  # honest broadcasts load


def test_zip_bomb_is_refused_from_its_declared_size(tmp_path):
    numel = 16 * 2**20  # 64 MiB of zeros deflate to ~64 KiB
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", _tensor_pickle((numel,), (1,), numel=numel))
        with archive.open("archive/data/0", "w") as member:
            for _ in range(4):
                member.write(bytes(2**24))
    assert os.path.getsize(bomb) < 2**20
    err, peak = _peak(lambda: read_torch_checkpoint(bomb, max_bytes=16 * 2**20))
    assert isinstance(err, CheckpointError) and "budget" in str(err)
    assert peak < 2**20, "nothing may be decompressed before the size is checked"

    # A member whose header declares 3.9 GB (the default budget is 4 x file + 256 MiB).
    declared = 975 * 2**20
    lying = _zip(tmp_path / "lying.pth", _tensor_pickle((declared,), (1,), numel=declared), {"0": bytes(64)})
    _declare_size(lying, "archive/data/0", 4 * declared)
    err, peak = _peak(lambda: read_torch_checkpoint(lying))
    assert isinstance(err, CheckpointError) and "budget" in str(err)
    assert peak < 2**20
    assert default_budget(os.path.getsize(lying)) < 4 * declared


def test_storage_must_match_its_zip_member(tmp_path):
    wrong = _zip(tmp_path / "w.pth", _tensor_pickle((4,), (1,), numel=4), {"0": bytes(64)})
    with pytest.raises(CheckpointError, match="holds 64 bytes, expected 16"):
        read_torch_checkpoint(wrong)
    for size, stride, offset in [((3,), (-1,), 2), ((5,), (1,), 0), ((2, 2), (1,), 0), ((2,), (1,), 3)]:
        bad = _zip(tmp_path / "b.pth", _tensor_pickle(size, stride, offset, numel=4), {"0": bytes(16)})
        with pytest.raises(CheckpointError, match="corrupt|truncated"):
            read_torch_checkpoint(bad)


def test_budget_is_configurable_and_real_files_fit_the_default(tmp_path):
    path = tmp_path / "real.pth"
    weights = {"w": np.arange(3 * 2**20, dtype=np.float32).reshape(3, 2**20)}
    write_torch_checkpoint(path, {"model": weights})
    np.testing.assert_array_equal(read_torch_checkpoint(path)["model"]["w"], weights["w"])
    with pytest.raises(CheckpointError, match="pass a larger max_bytes"):
        read_torch_checkpoint(path, max_bytes=2**20)
    with pytest.raises(ValueError, match="max_bytes must be a positive"):
        read_torch_checkpoint(path, max_bytes=0)


def _pickle_file(tmp_path: Path, data: bytes) -> Path:
    return _zip(tmp_path / "p.pth", data)


def test_deep_or_self_referencing_data_is_refused_not_a_crash(tmp_path):
    deep_list = P.PROTO + b"\x02" + P.EMPTY_LIST * 100_000 + P.APPEND * 99_999 + P.STOP
    # A million nested tuples as a dict key: hashing it overflowed the C stack (a segfault).
    deep_key = P.PROTO + b"\x02" + P.EMPTY_DICT + P.EMPTY_TUPLE + P.TUPLE1 * 1_000_000 + P.NONE \
        + P.SETITEM + P.STOP
    cycle = P.PROTO + b"\x02" + P.EMPTY_LIST + P.BINPUT + b"\x00" + P.BINGET + b"\x00" + P.APPEND + P.STOP
    # 60 levels of [x, x]: 2^60 nodes for any walker that treats it as a tree.
    laughs = P.PROTO + b"\x02" + P.NONE + (P.BINPUT + b"\x00" + P.MARK + P.BINGET + b"\x00" + P.BINGET
                                            + b"\x00" + P.LIST) * 60 + P.STOP
    for data, message in [(deep_list, "nests more than 100"), (deep_key, "nests tuples more than 100"),
                          (cycle, "contains itself"), (laughs, "shared sub-structures")]:
        with pytest.raises(CheckpointError, match=message):
            read_torch_checkpoint(_pickle_file(tmp_path, data))
    ok = {"a": [[[{"b": (1, (2, (3,)))}]]], "c": "x"}
    assert read_torch_checkpoint(_pickle_file(tmp_path, pickle.dumps(ok, 2))) == ok


def test_only_the_allow_list_is_ever_called(tmp_path):
    marker = tmp_path / "pwned"
    calls = [
        (P.GLOBAL + b"torch\nFloatStorage\n" + P.BINUNICODE + b"\x01\x00\x00\x00O" + P.TUPLE1 + P.REDUCE,
         "calls torch.FloatStorage"),
        (P.GLOBAL + b"os\nsystem\n" + P.EMPTY_TUPLE + P.NEWOBJ + P.EMPTY_DICT + P.BUILD, None),
        (P.EMPTY_LIST + P.EMPTY_DICT + P.BUILD, "sets the state"),
        (P.EMPTY_DICT + P.NONE + P.APPEND, "APPEND on"),
        (P.MARK + P.GLOBAL + b"collections\nOrderedDict\n" + P.EMPTY_LIST + P.OBJ, None),
    ]
    for body, message in calls:
        data = P.PROTO + b"\x02" + body + P.STOP
        if message:
            with pytest.raises(CheckpointError, match=message):
                read_torch_checkpoint(_pickle_file(tmp_path, data))
        else:
            read_torch_checkpoint(_pickle_file(tmp_path, data))
    evil = P.PROTO + b"\x02" + P.GLOBAL + b"os\nsystem\n" + pickle.dumps(f"touch {marker}", 2)[2:-1] \
        + P.TUPLE1 + P.REDUCE + P.STOP
    result = read_torch_checkpoint(_pickle_file(tmp_path, evil))
    assert isinstance(result, Placeholder) and result.qualname == "system" and not marker.exists()


# ---------------------------------------------------------------------------- fuzz

FUZZ_BUDGET = 8 * 2**20
_FRAGMENTS = [
    P.MARK, P.EMPTY_LIST, P.EMPTY_DICT, P.EMPTY_TUPLE, P.EMPTY_SET, P.NONE, P.NEWTRUE, P.BININT1 + b"\x03",
    P.LONG1 + b"\x09" + b"\xff" * 8 + b"\x7f", P.TUPLE, P.TUPLE1, P.TUPLE2, P.TUPLE3, P.LIST, P.DICT,
    P.APPEND, P.APPENDS, P.SETITEM, P.SETITEMS, P.ADDITEMS, P.FROZENSET, P.POP, P.DUP, P.MEMOIZE,
    P.BINGET + b"\x00", P.BINGET + b"\x01", P.BINPUT + b"\x00", P.REDUCE, P.NEWOBJ, P.BUILD, P.BINPERSID,
    P.POP_MARK, P.STACK_GLOBAL, P.EXT1 + b"\x01", P.OBJ, P.PERSID + b"0\n", P.NEXT_BUFFER,
    P.BINBYTES8 + (2**60).to_bytes(8, "little"), P.SHORT_BINUNICODE + b"\x07storage",
    P.SHORT_BINUNICODE + b"\x010", P.SHORT_BINUNICODE + b"\x03cpu",
    P.BININT + (2**31 - 1).to_bytes(4, "little"),
    P.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n", P.GLOBAL + b"torch._utils\n_rebuild_parameter\n",
    P.GLOBAL + b"torch\nFloatStorage\n", P.GLOBAL + b"collections\nOrderedDict\n",
    P.GLOBAL + b"os\nsystem\n", P.GLOBAL + b"builtins\neval\n", P.GLOBAL + b"builtins\n__import__\n",
    P.GLOBAL + b"subprocess\nPopen\n", P.INST + b"os\nsystem\n", P.GLOBAL + b"numpy\nndarray\n",
]


def _check_inert(read, directory: Path) -> object:
    """Run a read; it must return or raise CheckpointError, within the memory budget, importing and
    writing nothing."""
    modules, before = set(sys.modules), sorted(os.listdir(directory))
    result, peak = _peak(read)
    assert not isinstance(result, Exception) or isinstance(result, CheckpointError), repr(result)
    assert peak < FUZZ_BUDGET + 4 * 2**20, peak
    assert set(sys.modules) == modules, set(sys.modules) - modules
    assert sorted(os.listdir(directory)) == before
    return result


FUZZ = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(program=st.lists(st.sampled_from(_FRAGMENTS), max_size=60),
       protocol=st.sampled_from([b"\x02", b"\x04"]))
def test_fuzz_pickle_programs_end_in_a_result_or_checkpoint_error(program, protocol):
    with tempfile.TemporaryDirectory() as tmp:
        path = _zip(Path(tmp) / "f.pth", P.PROTO + protocol + b"".join(program) + P.STOP,
                    {"0": np.arange(4, dtype=np.float32).tobytes()})
        _check_inert(lambda: read_torch_checkpoint(path, max_bytes=FUZZ_BUDGET), Path(tmp))


@pytest.fixture(scope="module")
def torch_file_bytes(tmp_path_factory) -> bytes:
    torch = pytest.importorskip("torch")
    import argparse

    base = torch.arange(12.0).reshape(3, 4)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    path = tmp_path_factory.mktemp("fuzz") / "base.pth"
    torch.save({"model": model.state_dict(), "view": base[1:, ::2], "half": torch.ones(3).half(),
                "args": argparse.Namespace(lr=1e-3, depth=2), "epoch": 4}, path)
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_torch_files_end_in_a_result_or_checkpoint_error(torch_file_bytes, data):
    raw = bytearray(torch_file_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[:data.draw(st.integers(len(raw) // 2, len(raw)))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.pth"
        path.write_bytes(bytes(raw))
        _check_inert(lambda: read_torch_checkpoint(path, max_bytes=FUZZ_BUDGET), Path(tmp))


_INTS = st.one_of(st.integers(0, 6), st.integers(-3, 6),
                  st.sampled_from([2**31, 2**40, 2**62, 2**63, 2**70, -(2**63)]))


@FUZZ
@given(data=st.data(), offset=_INTS, numel=st.integers(0, 40),
       stored=st.one_of(st.none(), st.integers(0, 40)))
def test_fuzz_tensor_records_load_exactly_or_are_refused(data, offset, numel, stored):
    size = data.draw(st.lists(_INTS, max_size=4))
    stride = data.draw(st.one_of(st.lists(_INTS, min_size=len(size), max_size=len(size)),
                                 st.lists(_INTS, max_size=4)))
    stored = numel if stored is None else stored  # half the files store what they declare
    values = np.arange(stored, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = _zip(Path(tmp) / "t.pth", _tensor_pickle(size, stride, offset, numel), {"0": values.tobytes()})
        result = _check_inert(lambda: read_torch_checkpoint(path, max_bytes=FUZZ_BUDGET), Path(tmp))
    valid = (numel == stored and len(size) == len(stride) and 0 <= offset < 2**63  # torch's int64
             and all(0 <= v < 2**48 for v in size) and all(0 <= v < 2**63 for v in stride))
    if valid and 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        valid = last < numel and int(np.prod(size, dtype=object)) * 4 <= FUZZ_BUDGET
    if not valid:
        assert isinstance(result, CheckpointError)
        return
    assert isinstance(result, np.ndarray) and result.shape == tuple(size)
    if 0 not in size:
        strides = [4 * s if n > 1 else 0 for n, s in zip(size, stride, strict=True)]
        expected = np.lib.stride_tricks.as_strided(values[offset:], shape=size, strides=strides)
        np.testing.assert_array_equal(result, expected)


# ============================================================================ training checkpoints

from seisfuse.train.checkpoint import (  # noqa: E402
    Checkpointer,
    CheckpointWriteError,
    DamagedCheckpointWarning,
    probe_writable,
    restore_params,
)


def _state(step: int) -> dict:
    params = {"dense": {"kernel": jnp.full((4, 3), float(step)), "bias": jnp.arange(3.0) + step}}
    return {"step": jnp.asarray(step), "params": params,
            "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)}}


def _abstract(state: dict) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


@pytest.fixture()
def three_steps(tmp_path) -> Path:
    directory = tmp_path / "checkpoints"
    checkpointer = Checkpointer(directory, keep=5)
    for step in (1, 2, 3):
        checkpointer.save(step, _state(step), {"position": step})
    checkpointer.close()
    return directory


def _chunk_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d")


def test_truncated_array_file_is_caught_and_restore_falls_back(three_steps):
    # Cutting one chunk file makes orbax restore zeros for the arrays in it, without an error.
    target = max(_chunk_files(three_steps / "3"), key=lambda p: p.stat().st_size)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    checkpointer = Checkpointer(three_steps, keep=5)
    try:
        with pytest.raises(Exception):  # noqa: B017 - orbax's read error, or our fingerprint check
            checkpointer.restore(3, _abstract(_state(3)))
        with pytest.warns(DamagedCheckpointWarning, match="step 3 .* damaged"):
            step, state, data = checkpointer.restore_latest(_abstract(_state(3)))
        assert step == 2 and data == {"position": 2}
        np.testing.assert_array_equal(state["params"]["dense"]["bias"], np.arange(3.0) + 2)
        assert (three_steps / "3.damaged").is_dir() and checkpointer.latest_step() == 2
        checkpointer.save(3, _state(3), {"position": 3})  # the step can be written again
    finally:
        checkpointer.close()


def test_arrays_of_another_step_are_caught_by_the_fingerprints(three_steps):
    # Step 3's arrays replaced by step 2's intact files: orbax restores them without complaint.
    shutil.rmtree(three_steps / "3" / "state")
    shutil.copytree(three_steps / "2" / "state", three_steps / "3" / "state")
    checkpointer = Checkpointer(three_steps, keep=5)
    try:
        restored = checkpointer.manager.restore(3, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(_state(3)))))
        np.testing.assert_array_equal(restored.state["params"]["dense"]["bias"], np.arange(3.0) + 2)
        with pytest.raises(CheckpointError, match="differ from what was saved .*params/dense/bias"):
            checkpointer.restore(3, _abstract(_state(3)))
    finally:
        checkpointer.close()


def test_garbled_iterator_state_and_non_finite_values_count_as_damage(three_steps):
    (three_steps / "3" / "data" / "metadata").write_text("{not json")
    checkpointer = Checkpointer(three_steps, keep=5)
    try:
        nan_state = _state(4)
        nan_state["params"]["dense"]["bias"] = jnp.array([0.0, jnp.nan, 1.0])
        checkpointer.save(4, nan_state, {"position": 4})
        checkpointer.manager.wait_until_finished()
        with pytest.warns(DamagedCheckpointWarning) as caught:
            step, _, _ = checkpointer.restore_latest(_abstract(_state(4)))
        assert step == 2
        text = " ".join(str(w.message) for w in caught)
        assert "step 4" in text and "non-finite" in text and "step 3" in text
    finally:
        checkpointer.close()


def test_nothing_restorable_is_one_clear_error(three_steps, tmp_path):
    checkpointer = Checkpointer(three_steps, keep=5)
    wrong = _abstract({**_state(1), "params": {"dense": {"kernel": jnp.zeros((5, 3)), "bias": jnp.zeros(3)}}})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DamagedCheckpointWarning)
            with pytest.raises(CheckpointError, match="no checkpoint .* restores intact(.|\n)*step 1"):
                checkpointer.restore_latest(wrong)
    finally:
        checkpointer.close()
    empty = Checkpointer(tmp_path / "empty")
    assert empty.restore_latest(_abstract(_state(1))) is None
    empty.close()


def test_params_only_restore_reads_the_structure_from_the_checkpoint(three_steps):
    params = restore_params(three_steps)
    np.testing.assert_array_equal(params["dense"]["kernel"], np.full((4, 3), 3.0))
    for chunk in _chunk_files(three_steps / "3"):
        chunk.write_bytes(b"")
    with pytest.warns(DamagedCheckpointWarning, match="step 3"):
        params = restore_params(three_steps)
    np.testing.assert_array_equal(params["dense"]["bias"], np.arange(3.0) + 2)
    assert (three_steps / "3").is_dir(), "a read-only restore moves nothing"
    with pytest.raises(FileNotFoundError):
        restore_params(three_steps.parent / "nothing")


def test_unwritable_directory_fails_at_once(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    start = time.monotonic()
    with pytest.raises(CheckpointWriteError, match="cannot write checkpoints to .*a_file/ckpt"):
        probe_writable(blocker / "ckpt")
    with pytest.raises(CheckpointWriteError):
        Checkpointer(blocker / "ckpt")
    assert isinstance(CheckpointWriteError("x"), PermissionError)
    assert time.monotonic() - start < 5
    probe_writable(tmp_path / "fine" / "deeper")
    assert (tmp_path / "fine" / "deeper").is_dir() and not list((tmp_path / "fine" / "deeper").iterdir())


# ============================================================================ seismic readers

from seisfuse.data import readers as rd  # noqa: E402
from seisfuse.eval.embed import (  # noqa: E402
    WAVEFORM_SUFFIXES,
    check_retrieval,
    guess_input_key,
    list_inputs,
    load_embeddings,
    read_items,
    save_embeddings,
)

SEGY_DATA = OBSPY / "io" / "segy" / "tests" / "data"


def test_little_endian_segy_and_seismic_unix_are_read(tmp_path):
    planes = rd.read_segy(SEGY_DATA / "planes.segy_first_trace")  # IBM floats, little-endian
    np.testing.assert_array_equal(planes.T, np.load(SEGY_DATA / "planes.segy_first_trace.npy"))
    data = np.random.default_rng(0).normal(size=(5, 300)).astype(np.float32)
    stream = obspy.Stream([obspy.Trace(d, header={"delta": 0.004}) for d in data])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for order in "<>":
            stream.write(str(tmp_path / "x.sgy"), format="SEGY", byteorder=order, data_encoding=5)
            np.testing.assert_array_equal(rd.read_segy(tmp_path / "x.sgy"), data.T)
            stream.write(str(tmp_path / "x.su"), format="SU", byteorder=order)
            np.testing.assert_array_equal(rd.read_segy(tmp_path / "x.su"), data.T)
    shutil.copy(SEGY_DATA / "1.su_first_trace", tmp_path / "forbriger.su")
    np.testing.assert_array_equal(rd.read_segy(tmp_path / "forbriger.su")[:3, 0], [-12, -31, -40])
    (tmp_path / "junk.su").write_bytes(b"\x01" * 1001)
    with pytest.raises(rd.SeismicDataError, match="Seismic Unix"):
        rd.read_segy(tmp_path / "junk.su")


@pytest.mark.parametrize("name, samples", [("sac/tests/data/sample_spacing_rounding_issue.sac", 10),
                                           ("mseed/tests/data/microsecond_wrap.mseed", 277)])
def test_what_obspy_reads_with_a_warning_is_read_with_that_warning(name, samples):
    path = OBSPY / "io" / name
    with pytest.warns(UserWarning, match=f"{path.name}: "):
        stream = rd.read_stream(path)
    assert stream[0].stats.npts == samples


def test_literal_file_names_with_pattern_characters(tmp_path):
    obspy.read().write(str(tmp_path / "event[1].mseed"), format="MSEED")
    assert len(rd.read_stream(tmp_path / "event[1].mseed")) == 3


@pytest.fixture()
def event():
    return obspy.read()  # BW.RJOB..EH[ZNE], 100 Hz, 30 s


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rd.RepairWarning)
        return fn()


def test_one_file_per_component_folders_become_three_component_records(event, tmp_path):
    reference, _ = _quiet(lambda: read_items([_write(event, tmp_path / "whole.mseed")], "waveform"))
    folder = tmp_path / "per_component"
    folder.mkdir()
    for tr in event:
        tr.write(str(folder / f"{tr.id}.sac"), format="SAC")
        later = tr.copy()
        later.stats.starttime += 3600  # a second event of the same station, also one file each
        later.write(str(folder / f"{tr.id}.later.sac"), format="SAC")
    files = list_inputs([folder], WAVEFORM_SUFFIXES)
    items, names = _quiet(lambda: read_items(files, "waveform"))
    assert items.shape == (2, 3001, 3)
    assert sorted(names) == [
        "BW.RJOB..EH (BW.RJOB..EHE.later.sac, BW.RJOB..EHN.later.sac, BW.RJOB..EHZ.later.sac)",
        "BW.RJOB..EH (BW.RJOB..EHE.sac, BW.RJOB..EHN.sac, BW.RJOB..EHZ.sac)"]
    np.testing.assert_allclose(items[0], reference[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(items[1], reference[0], rtol=1e-5, atol=1e-6)


def _write(stream, path: Path) -> Path:
    stream.write(str(path), format="MSEED")
    return path


def test_a_component_cut_off_at_a_record_boundary_is_an_error_unless_padding(event, tmp_path):
    raw = _write(event, tmp_path / "ev.mseed").read_bytes()
    cut = tmp_path / "cut.mseed"
    cut.write_bytes(raw[:len(raw) * 2 // 3])  # Z and N complete, E's records all cut away
    assert [tr.stats.channel for tr in obspy.read(str(cut))] == ["EHZ", "EHN"]
    with pytest.raises(rd.SeismicDataError, match="cut.mseed.*missing E.*pad=True"):
        read_items([cut], "waveform")
    with pytest.warns(rd.RepairWarning, match="filled with zeros"):
        items, _ = read_items([cut], "waveform", pad=True)
    assert np.all(items[0, :, 2] == 0) and np.any(items[0, :, 0] != 0)


# ============================================================================ embed inputs and outputs


@pytest.mark.parametrize("array, message", [
    (np.ones((3001, 3)) * (1 + 1j), "complex"), (np.array(["a", "b"]), "dtype <U1"),
    (np.float32(3.0), "a scalar"), (np.zeros((0, 3)), "no values")])
def test_arrays_no_model_should_see_are_refused_with_the_file_name(tmp_path, array, message):
    path = tmp_path / "odd.npy"
    np.save(path, array)
    for key in ("waveform", "image"):
        with pytest.raises(ValueError, match=f"odd.npy: .*{message}"):
            read_items([path], key)


def test_unreadable_npy_files_are_named(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    np.save(tmp_path / "scalar.npy", np.float32(1.0))
    for name in ("objects.npy", "junk.npy"):
        with pytest.raises(ValueError, match=f"{name}: not a readable .npy"):
            read_items([tmp_path / name], "image")
    with pytest.raises(ValueError, match="scalar.npy: cannot tell"):
        guess_input_key(tmp_path / "scalar.npy")


def test_huge_finite_values_normalise_instead_of_overflowing(tmp_path):
    rng = np.random.default_rng(1)
    wave, image = rng.standard_normal((3001, 3)), rng.standard_normal((224, 224))
    for name, array, key in [("w", wave, "waveform"), ("i", image, "image")]:
        np.save(tmp_path / f"{name}.npy", array.astype(np.float32))
        np.save(tmp_path / f"{name}_huge.npy", (array * 3e38 / np.abs(array).max()).astype(np.float32))
        plain, _ = read_items([tmp_path / f"{name}.npy"], key)
        huge, _ = read_items([tmp_path / f"{name}_huge.npy"], key)
        assert np.all(np.isfinite(huge))
        np.testing.assert_allclose(huge, plain, atol=2e-5)


def test_save_embeddings_never_overwrites_inputs_or_existing_files(tmp_path):
    emb = np.eye(3, 4, dtype=np.float32)
    identity = {"config_sha256": "ab" * 32, "step": 7}
    path, meta = save_embeddings(tmp_path / "g", emb, ["a", "b", "c"], "image", "run", identity=identity)
    assert json.loads(meta.read_text())["identity"] == identity
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_embeddings(tmp_path / "g", emb, ["a", "b", "c"], "image", "run")
    save_embeddings(tmp_path / "g", 2 * emb, ["a", "b", "c"], "image", "run", overwrite=True)
    np.testing.assert_array_equal(np.load(path), 2 * emb)
    source = tmp_path / "input.npy"
    np.save(source, np.zeros((224, 224)))
    with pytest.raises(ValueError, match="is the input"):
        save_embeddings(source, emb, ["a", "b", "c"], "image", "run", inputs=[source], overwrite=True)
    assert np.load(source).shape == (224, 224)
    with pytest.raises(ValueError, match="NaN"):
        save_embeddings(tmp_path / "nan", emb * np.nan, ["a", "b", "c"], "image", "run")


def test_retrieval_checks_the_gallery_against_the_run(tmp_path):
    identity = {"config_sha256": "ab" * 32, "step": 7}
    embedder = SimpleNamespace(identity=identity, modalities=("image", "waveform"))
    info = {"modality": "image", "identity": identity, "names": ["a", "b", "c"]}
    assert check_retrieval(info, embedder, "waveform", 10) == 3
    assert check_retrieval(info, embedder, "waveform", 2) == 2
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive"):
            check_retrieval(info, embedder, "waveform", k)
    with pytest.raises(ValueError, match="query is a image and so is"):
        check_retrieval(info, embedder, "image", 3)
    with pytest.raises(ValueError, match="another run or checkpoint .*step 8"):
        check_retrieval({**info, "identity": {**identity, "step": 8}}, embedder, "waveform", 3)
    with pytest.raises(ValueError, match="no run identity"):
        check_retrieval({**info, "identity": None}, embedder, "waveform", 3)
    path, meta = save_embeddings(tmp_path / "g", np.eye(3, dtype=np.float32), ["a", "b", "c"], "image", "r")
    meta.write_text("{garbled")
    with pytest.raises(ValueError, match="not a gallery written by seisfuse embed"):
        load_embeddings(path)


def test_embedder_restores_params_only_and_records_the_run(tmp_path):
    import flax.linen as nn

    from seisfuse.eval.embed import load_embedder, run_identity
    from seisfuse.train.config import load_config, save_run_config
    from seisfuse.train.tasks import make_task

    config = load_config("configs/align.py:tiny", [])
    config.model.image.overrides = {"img_size": 32, "patch_size": 8}
    config.model.waveform.overrides = {"conv_kernel": [4, 4], "conv_stride": [4, 4],
                                       "num_conv_pos_embeddings": 16}
    config.model.image.pooling = config.model.waveform.pooling = "mean"
    task = make_task(config)
    shapes = jax.eval_shape(lambda: nn.unbox(task.init_params(jax.random.key(1))))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), s.dtype), shapes)
    save_run_config(tmp_path, config)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(5, {"step": jnp.asarray(5), "params": params, "opt_state": {}}, {})
    checkpointer.close()
    embedder = load_embedder(tmp_path)
    assert embedder.identity == run_identity(config, 5)
    jax.tree.map(np.testing.assert_array_equal, embedder.params, params)
    emb = embedder("waveform", np.random.default_rng(0).standard_normal((2, 400, 3)))
    assert emb.shape[0] == 2 and np.all(np.isfinite(emb))
    config.model.image.overrides = {"img_size": 64, "patch_size": 8}  # another recipe than the run's
    (tmp_path / "config.json").write_text(config.to_json())
    with pytest.raises(ValueError, match="does not hold the params this run's config builds"):
        load_embedder(tmp_path)


# ============================================================================ spectrogram and masks


def test_spectrogram_refuses_bad_sizes_and_values():
    from seisfuse.data.spectrogram import melspectrogram

    y = np.random.default_rng(0).standard_normal(3001)
    kwargs = dict(sr=100.0, n_fft=256, hop_length=13, n_mels=64)
    for bad in (dict(hop_length=0), dict(n_fft=-1), dict(n_mels=0), dict(hop_length=2.5), dict(sr=0.0)):
        with pytest.raises(ValueError, match="must be a positive"):
            melspectrogram(y, **{**kwargs, **bad})
    for values in (np.where(np.arange(3001) == 9, np.nan, y), np.full(3001, np.inf)):
        with pytest.raises(ValueError, match="NaN/inf"):
            melspectrogram(values, **kwargs)
    with pytest.raises(ValueError, match="real numbers"):
        melspectrogram(y + 1j, **kwargs)


def test_masks_refuse_empty_batches_and_bad_ratios():
    from seisfuse.masking import negative_indices, span_mask

    rng = np.random.default_rng(0)
    for shape in ((0, 50), (4, 0)):
        with pytest.raises(ValueError, match="at least one example"):
            span_mask(rng, shape, 0.5, 5)
    for prob in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="mask_prob must be in"):
            span_mask(rng, (2, 50), prob, 5)
    with pytest.raises(ValueError, match="empty batch"):
        negative_indices(rng, np.zeros((0, 10), bool), 3)


def test_ordered_dict_metadata_of_torch_state_dicts_survives(tmp_path):
    # torch pickles a state_dict's `_metadata` with BUILD: the one BUILD on a non-placeholder allowed.
    state = collections.OrderedDict(w=np.ones(2, np.float32))
    data = (P.PROTO + b"\x02" + P.GLOBAL + b"collections\nOrderedDict\n" + P.EMPTY_TUPLE + P.REDUCE
            + pickle.dumps({"_metadata": {"": {"version": 1}}}, 2)[2:-1] + P.BUILD + P.STOP)
    loaded = read_torch_checkpoint(_pickle_file(tmp_path, data))
    assert loaded._metadata == {"": {"version": 1}} and isinstance(loaded, type(state))
