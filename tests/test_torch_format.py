"""The torch-free checkpoint reader/writer: fidelity with torch.save, safety, clear errors."""

import argparse
import collections
import pathlib
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from seisfuse.convert.torch_format import (
    CheckpointError,
    Placeholder,
    read_torch_checkpoint,
    write_torch_checkpoint,
)


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    return collections.OrderedDict(
        f32=torch.randn(2, 3, generator=gen), f16=torch.randn(4, generator=gen).half(),
        bf16=torch.randn(3, 2, generator=gen).bfloat16(), i64=torch.arange(7),
        mask=torch.tensor([True, False]),
        transposed=base.t(), sliced=base[1:4, 2:], scalar=torch.tensor(3.5), empty=torch.zeros(0, 4),
        shared_a=base, shared_b=base.view(-1))


def _as_float(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy() if t.is_floating_point() else t.numpy()


def test_reads_what_torch_save_writes(tmp_path):
    state = _state()
    path = tmp_path / "ck.pth"
    args = argparse.Namespace(lr=1e-3, out=pathlib.PosixPath("/tmp/x"))
    torch.save({"model": state, "param": torch.nn.Parameter(torch.ones(2)), "args": args, "epoch": 7}, path)
    loaded = read_torch_checkpoint(path)
    assert loaded["epoch"] == 7
    np.testing.assert_array_equal(loaded["param"], np.ones(2, np.float32))
    for key, tensor in state.items():
        got = loaded["model"][key]
        assert got.shape == tuple(tensor.shape), key
        np.testing.assert_array_equal(got.astype(np.float32) if got.dtype == ml_dtypes.bfloat16 else got,
                                      _as_float(tensor), err_msg=key)
    assert loaded["model"]["bf16"].dtype == ml_dtypes.bfloat16
    assert loaded["model"]["f16"].dtype == np.float16
    namespace = loaded["args"]
    assert isinstance(namespace, Placeholder) and namespace.qualname == "Namespace"
    assert namespace.state["lr"] == 1e-3
    assert namespace.state["out"].module == "pathlib"


def test_written_file_loads_in_torch_weights_only(tmp_path):
    state = {k: _as_float(v) for k, v in _state().items()}
    state["bf16"] = state["bf16"].astype(ml_dtypes.bfloat16)
    path = tmp_path / "out.pth"
    write_torch_checkpoint(path, {"model": state, "epoch": 3, "big": 2**40, "neg": -5, "name": "é",
                                  "nested": [1.5, None, (True, "x")]})
    loaded = torch.load(path, weights_only=True)
    assert (loaded["epoch"], loaded["big"], loaded["neg"], loaded["name"]) == (3, 2**40, -5, "é")
    assert loaded["nested"] == [1.5, None, (True, "x")]
    for key, value in state.items():
        got = loaded["model"][key]
        assert got.shape == value.shape, key
        np.testing.assert_array_equal(_as_float(got), value.astype(np.float32)
                                      if value.dtype == ml_dtypes.bfloat16 else value)
    assert loaded["model"]["bf16"].dtype == torch.bfloat16
    again = read_torch_checkpoint(path)
    np.testing.assert_array_equal(again["model"]["sliced"], state["sliced"])
    assert not list(tmp_path.glob(".*tmp")), "the temporary file must be renamed away"


class _RunsCommand:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


class _WritesFile:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("payload", [_RunsCommand, _WritesFile])
def test_malicious_pickle_is_inert(tmp_path, payload):
    marker = tmp_path / "side_effect"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": payload(marker)}, path)
    assert not marker.exists()
    loaded = read_torch_checkpoint(path)
    assert not marker.exists(), "unpickling must not run anything from the file"
    assert isinstance(loaded["args"], Placeholder)
    assert loaded["args"].qualname in {"system", "eval"}
    np.testing.assert_array_equal(loaded["model"]["w"], np.ones(2, np.float32))


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch zip checkpoint"):
        read_torch_checkpoint(text)
    with pytest.raises(CheckpointError, match="not found"):
        read_torch_checkpoint(tmp_path / "missing.pth")
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("readme.txt", "x")
    with pytest.raises(CheckpointError, match="data.pkl"):
        read_torch_checkpoint(other_zip)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="legacy"):
        read_torch_checkpoint(legacy)


def test_truncated_file(tmp_path):
    path = tmp_path / "ck.pth"
    torch.save({"model": {"w": torch.randn(1000)}}, path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        broken = tmp_path / f"cut{cut}.pth"
        broken.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            read_torch_checkpoint(broken)


def test_storage_shorter_than_tensor(tmp_path):
    path = tmp_path / "ck.pth"
    torch.save({"w": torch.randn(8)}, path)
    with zipfile.ZipFile(path) as src:
        entries = {n: src.read(n) for n in src.namelist()}
    data_entry = next(n for n in entries if n.endswith("/data/0"))
    entries[data_entry] = entries[data_entry][:16]
    bad = tmp_path / "bad.pth"
    with zipfile.ZipFile(bad, "w") as dst:
        for name, raw in entries.items():
            dst.writestr(name, raw)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_torch_checkpoint(bad)
