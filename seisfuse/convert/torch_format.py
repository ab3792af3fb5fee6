"""Read and write PyTorch checkpoint files (the zip format of `torch.save`) without torch.

Reading never executes code from the file. The pickle is decoded by an unpickler whose `find_class`
answers from a fixed allow-list: torch's tensor/parameter rebuild functions become our own numpy
rebuilders, storage classes become dtypes, `collections.OrderedDict` stays a dict. Every other
global (argparse.Namespace, pathlib.PosixPath, ml_collections.ConfigDict, os.system, ...) becomes an
inert `Placeholder` that only records the arguments it was given: nothing is imported or called.

Writing emits the same container with a minimal pickle (dicts, lists, tuples, scalars, strings,
numpy arrays) that `torch.load(weights_only=True)` accepts.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
    """The file is not a readable PyTorch checkpoint, or does not hold what the caller needs."""


STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
DTYPE_STORAGES = {dtype: name for name, dtype in STORAGE_DTYPES.items()}


class Placeholder:
    """Inert stand-in for any pickled object outside the allow-list.

    `module`/`qualname` name the class the file asked for; `args` and `state` hold what the pickle
    would have passed to it, so e.g. an argparse.Namespace's fields stay readable via `state`.
    """

    module = ""
    qualname = ""

    # pickle's NEWOBJ calls only __new__, REDUCE calls the class: record the arguments in both.
    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        self = super().__new__(cls)
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # pickle's APPEND(S)/SETITEM(S) on objects built by NEWOBJ call these.
    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"Placeholder({self.module}.{self.qualname})"


def _placeholder_class(module: str, name: str) -> type[Placeholder]:
    return type(name, (Placeholder,), {"module": module, "qualname": name})


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *_: Any) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 in numpy: a bounds-checked strided view, copied out."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise CheckpointError(f"corrupt tensor record: size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise CheckpointError(
            f"tensor of size {size} reaches element {last} of a storage with {storage.size}: "
            "the file is truncated or corrupt")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride])
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._byteorder = "<" if byteorder == "little" else ">"
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        return _placeholder_class(module, name)

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent record {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, np.dtype):
            raise CheckpointError(f"storage {key!r} has unsupported type {dtype!r}")
        if key not in self._storages:
            entry = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(entry)
            except KeyError:
                raise CheckpointError(
                    f"missing storage record {entry!r}: file truncated or corrupt") from None
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise CheckpointError(f"cannot read storage {entry!r}: {exc}") from exc
            if len(raw) != numel * dtype.itemsize:
                raise CheckpointError(f"storage {entry!r} holds {len(raw)} bytes, expected "
                                      f"{numel} x {dtype.itemsize}: file truncated or corrupt")
            self._storages[key] = np.frombuffer(raw, dtype.newbyteorder(self._byteorder))
        return self._storages[key]


def read_torch_checkpoint(path: str | Path) -> Any:
    """Load what `torch.save` wrote at `path`: tensors as numpy arrays, foreign objects as Placeholders."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        with path.open("rb") as handle:
            head = handle.read(2)
        hint = (" (legacy pre-1.6 torch format: re-save it with a current torch)"
                if head == b"\x80\x02" else "")
        raise CheckpointError(f"{path} is not a PyTorch zip checkpoint{hint}: {exc}") from exc
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint "
                                  f"(expected one */data.pkl, found {len(pickles)})")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            byteorder = archive.read(prefix + "byteorder").decode()
        except KeyError:
            byteorder = "little"
        try:
            data = archive.read(pickles[0])
            return _SafeUnpickler(data, archive, prefix, byteorder).load()
        except CheckpointError:
            raise
        except Exception as exc:  # malformed pickle stream, CRC error, truncated member ...
            raise CheckpointError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- writing


class _PickleWriter:
    """Emit protocol-2 pickle opcodes for plain containers and numpy tensors (torch's layout)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.storages: list[np.ndarray] = []
        self.out.write(pickle.PROTO + b"\x02")

    def global_(self, module: str, name: str) -> None:
        self.out.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def dump(self, obj: Any) -> bytes:
        self.save(obj)
        self.out.write(pickle.STOP)
        return self.out.getvalue()

    def save(self, obj: Any) -> None:
        w = self.out.write
        if obj is None:
            w(pickle.NONE)
        elif isinstance(obj, (bool, np.bool_)):
            w(pickle.NEWTRUE if obj else pickle.NEWFALSE)
        elif isinstance(obj, (int, np.integer)):
            w(_int_opcode(int(obj)))
        elif isinstance(obj, (float, np.floating)):
            w(pickle.BINFLOAT + struct.pack(">d", float(obj)))
        elif isinstance(obj, str):
            raw = obj.encode("utf-8")
            w(pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw)
        elif isinstance(obj, tuple):
            w(pickle.MARK)
            for item in obj:
                self.save(item)
            w(pickle.TUPLE)
        elif isinstance(obj, list):
            w(pickle.EMPTY_LIST + pickle.MARK)
            for item in obj:
                self.save(item)
            w(pickle.APPENDS)
        elif isinstance(obj, Mapping):
            self.global_("collections", "OrderedDict")
            w(pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.MARK)
            for key, value in obj.items():
                self.save(key)
                self.save(value)
            w(pickle.SETITEMS)
        elif isinstance(obj, (np.ndarray, np.generic)) or hasattr(obj, "__array__"):
            self.save_tensor(np.asarray(obj))
        else:
            raise TypeError(f"cannot write {type(obj).__name__} into a torch checkpoint")

    def save_tensor(self, array: np.ndarray) -> None:
        array = np.array(array, order="C")  # ascontiguousarray would turn a 0-d tensor into 1-d
        if array.dtype not in DTYPE_STORAGES:
            raise TypeError(f"dtype {array.dtype} has no torch storage type")
        key = str(len(self.storages))
        self.storages.append(array)
        strides = tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim))
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out.write(pickle.MARK + pickle.MARK)
        self.save("storage")
        self.global_("torch", DTYPE_STORAGES[array.dtype])
        self.save(key)
        self.save("cpu")
        self.save(array.size)
        self.out.write(pickle.TUPLE + pickle.BINPERSID)
        self.save(0)
        self.save(tuple(array.shape))
        self.save(strides)
        self.save(False)
        self.save({})
        self.out.write(pickle.TUPLE + pickle.REDUCE)


def _int_opcode(value: int) -> bytes:
    if 0 <= value < 256:
        return pickle.BININT1 + bytes([value])
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    raw = value.to_bytes((value + (value < 0)).bit_length() // 8 + 1, "little", signed=True)
    return pickle.LONG1 + bytes([len(raw)]) + raw


def write_torch_checkpoint(path: str | Path, obj: Any) -> None:
    """Write `obj` (nested dicts/lists/tuples of numpy arrays and scalars) as `torch.save` would.

    The file is written beside the target and renamed into place, so a crash never leaves a
    half-written checkpoint under `path`.
    """
    path = Path(path)
    writer = _PickleWriter()
    data = writer.dump(obj)
    archive_name = "archive"
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{archive_name}/data.pkl", data)
        archive.writestr(f"{archive_name}/byteorder", "little")
        for key, array in enumerate(writer.storages):
            little_endian = array.astype(array.dtype.newbyteorder("<"))
            archive.writestr(f"{archive_name}/data/{key}", little_endian.tobytes())
        archive.writestr(f"{archive_name}/version", "3\n")
    tmp.replace(path)
