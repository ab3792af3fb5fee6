"""Read and write PyTorch checkpoint files (the zip format of `torch.save`) without torch.

Reading never executes code from the file and never lets the file decide how much memory is used.
The pickle is decoded by a restricted unpickler (the pure-Python one, so that every opcode that
builds or calls something passes through our checks): torch's tensor/parameter rebuild functions
become our own bounds-checked numpy rebuilders, storage classes become inert dtype tokens,
`collections.OrderedDict` stays a dict, and every other global (argparse.Namespace, pathlib.PosixPath,
ml_collections.ConfigDict, os.system, ...) becomes an inert `Placeholder` that only records the
arguments it was given: nothing is imported or called.

Hostile or damaged files end in `CheckpointError`, never in a MemoryError, RecursionError or crash:
- Every allocation the file asks for (the pickle's objects, each storage, each tensor copy) is
  charged against a per-file byte budget *before* it is made (`read_torch_checkpoint(max_bytes=)`,
  default `default_budget(file size)`): a zip bomb or a stride-0 "broadcast" of terabytes is
  refused from its declared sizes, without decompressing or copying anything.
- Zip entries must declare exactly the bytes their storage record says, be stored or deflated, and
  pass zipfile's CRC check; tensor records must stay inside their storage.
- Tuples (the only nested values a pickle can hash) are bounded in depth while unpickling, and the
  result is refused if it nests deeper than `MAX_DEPTH`, refers to itself, or shares sub-structures
  so much that walking it as a tree would take more than `MAX_SHARED_EXPANSION` extra steps.

Writing emits the same container with a minimal pickle (dicts, lists, tuples, scalars, strings,
numpy arrays) that `torch.load(weights_only=True)` accepts.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import reprlib
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

# Budget: 4 x the file covers a storage read plus a copy of every tensor with room to spare; the
# floor covers the pickle's Python objects in small files (see PICKLE_MEMORY_FACTOR).
DEFAULT_BUDGET_FACTOR = 4
DEFAULT_BUDGET_FLOOR = 256 * 2**20
# Bytes of Python objects one pickle byte can create at most (1-byte EMPTY_SET makes a 216-byte set).
PICKLE_MEMORY_FACTOR = 256
PLACEHOLDER_CLASS_BYTES = 4096  # a new class per global the file names (~2.5 KB measured)
MAX_DEPTH = 100  # real checkpoints nest < 20 levels; Python's recursion limit is 1000
MAX_SHARED_EXPANSION = 1_000_000  # extra visits a tree walk may make because of shared references
MAX_NDIM = 32
MAX_DIM = 2**48
_SAFE_REPR = reprlib.Repr()
_SAFE_REPR.maxlevel, _SAFE_REPR.maxstring, _SAFE_REPR.maxother = 3, 60, 60


def default_budget(file_size: int) -> int:
    """The default `max_bytes` for a file of `file_size` bytes: 4 x its size + 256 MiB."""
    return DEFAULT_BUDGET_FACTOR * file_size + DEFAULT_BUDGET_FLOOR


class Placeholder:
    """Inert stand-in for any pickled object outside the allow-list.

    Each global the file names becomes a subclass (so `type(x).__name__` is the name it asked
    for); `module`/`qualname` name it; `args` and `state` hold what the pickle would have passed
    to it, so e.g. an argparse.Namespace's fields stay readable via `state`.
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


class _StorageType:
    """What `torch.FloatStorage` & co. unpickle to: a dtype token that cannot be called."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


_STORAGE_TYPES = {name: _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()}


def _describe(obj: Any) -> str:
    """A short repr of a value from the file (never recursing far, never raising)."""
    try:
        return _SAFE_REPR.repr(obj)
    except Exception:  # a hostile object's repr may fail in any way
        return f"<{type(obj).__name__}>"


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not -2**63 <= value < 2**63:
        raise CheckpointError(f"corrupt tensor record: {what} is {_describe(value)}, not a 64-bit integer")
    return int(value)


def _ints(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or len(values) > MAX_NDIM:
        raise CheckpointError(f"corrupt tensor record: {what} is {_describe(values)}, not a tuple of "
                              f"at most {MAX_NDIM} integers")
    return tuple(_int(v, what) for v in values)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


class _Budget:
    """Bytes the file may still make us allocate; charged before each allocation."""

    def __init__(self, limit: int):
        self.limit, self.left = limit, limit

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise CheckpointError(
                f"{what} would need {nbytes:,} bytes, beyond the {self.limit:,}-byte budget "
                "for this file (max_bytes, default 4 x the file size + 256 MiB): the file is corrupt or "
                "hostile; if it is a genuine, larger checkpoint, pass a larger max_bytes")
        self.left -= nbytes


def _read_member(archive: zipfile.ZipFile, name: str, nbytes: int, budget: _Budget, what: str) -> bytearray:
    """Exactly `nbytes` of a zip member, refused from its header before anything is decompressed."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"missing {what} {name!r}: file truncated or corrupt") from None
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"{what} {name!r} uses zip compression method {info.compress_type}; "
                              "torch writes stored (uncompressed) members")
    if info.file_size != nbytes:
        raise CheckpointError(f"{what} {name!r} holds {info.file_size:,} bytes, expected {nbytes:,}: "
                              "file truncated or corrupt")
    budget.charge(nbytes, f"{what} {name!r}")
    buffer = bytearray(nbytes)
    view, got = memoryview(buffer), 0
    try:
        with archive.open(info) as member:
            while got < nbytes:
                chunk = member.read(min(2**24, nbytes - got))
                if not chunk:
                    break
                view[got:got + len(chunk)] = chunk
                got += len(chunk)
            extra = member.read(1)  # reaching the end runs zipfile's CRC check
    except CheckpointError:
        raise
    except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError, OSError, RuntimeError ...
        raise CheckpointError(f"cannot read {what} {name!r}: {type(exc).__name__}: {_describe(str(exc))}") \
            from exc
    if got != nbytes or extra:
        raise CheckpointError(f"{what} {name!r} does not hold the {nbytes:,} bytes its header declares: "
                              "file truncated or corrupt")
    return buffer


_Base = pickle._Unpickler  # the pure-Python unpickler: its opcodes are methods we can restrict
_OP = {name: getattr(pickle, name)[0] for name in (
    "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD",
    "APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS")}


class _SafeUnpickler(_Base):
    dispatch = dict(_Base.dispatch)

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str, budget: _Budget):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._archive, self._prefix, self._budget = archive, prefix, budget
        self._byteorder = "<" if byteorder == "little" else ">"
        self._storages: dict[str, tuple[_StorageType, int, np.ndarray]] = {}
        self._placeholders: dict[tuple[str, str], type[Placeholder]] = {}
        self._depths: dict[int, tuple[Any, int]] = {}  # id -> (nested tuple/frozenset, its depth)
        self._allowed: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("collections", "OrderedDict"): collections.OrderedDict,
        }

    # ---------------------------------------------------------------- globals and storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        key = (module, name)
        if key not in self._placeholders:
            self._budget.charge(PLACEHOLDER_CLASS_BYTES, f"a stand-in class for {_describe(module)}."
                                                         f"{_describe(name)}")
            self._placeholders[key] = type(name, (Placeholder,), {"module": module, "qualname": name})
        return self._placeholders[key]

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent record {_describe(pid)}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"storage {_describe(key)} has unsupported type {_describe(storage_type)}")
        if not isinstance(key, str):
            raise CheckpointError(f"storage key {_describe(key)} is not a string")
        numel = _int(numel, f"storage {key!r} size")
        if numel < 0:
            raise CheckpointError(f"storage {key!r} declares a negative size {numel}")
        if key in self._storages:
            known_type, known_numel, array = self._storages[key]
            if (known_type, known_numel) != (storage_type, numel):
                raise CheckpointError(f"storage {key!r} is declared as both {known_type} x {known_numel} "
                                      f"and {storage_type} x {numel}: corrupt file")
            return array
        dtype = storage_type.dtype
        raw = _read_member(self._archive, f"{self._prefix}data/{key}", numel * dtype.itemsize, self._budget,
                           "storage")
        array = np.frombuffer(raw, dtype.newbyteorder(self._byteorder))
        self._storages[key] = (storage_type, numel, array)
        return array

    def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
        """torch._utils._rebuild_tensor_v2 in numpy: a bounds- and budget-checked strided view."""
        if not isinstance(storage, np.ndarray) or storage.ndim != 1:
            raise CheckpointError(f"corrupt tensor record: its storage is {_describe(storage)}")
        offset, size, stride = _int(offset, "offset"), _ints(size, "size"), _ints(stride, "stride")
        if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride) \
                or any(n > MAX_DIM for n in size):
            raise CheckpointError(f"corrupt tensor record: size {_describe(size)}, stride "
                                  f"{_describe(stride)}, offset {offset}")
        if 0 in size:
            return np.zeros(size, storage.dtype)
        stride = tuple(0 if n == 1 else s for n, s in zip(size, stride, strict=True))  # unused strides
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.size:
            raise CheckpointError(
                f"tensor of size {size} reaches element {last} of a storage with {storage.size}: "
                "the file is truncated or corrupt")
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride])
        if view.flags.c_contiguous:
            return view  # shares its storage, as the torch tensor did
        self._budget.charge(math.prod(size) * storage.itemsize, f"tensor of size {size}")
        return np.array(view)

    # ---------------------------------------------------------------- restricted opcodes

    def _call(self, func: Any, args: Any, kwargs: Any) -> Any:
        """REDUCE / NEWOBJ / INST / OBJ: only the allow-list and Placeholders may be called."""
        if not isinstance(args, tuple) or not isinstance(kwargs, dict) \
                or not all(isinstance(k, str) for k in kwargs):
            raise CheckpointError("corrupt pickle: call arguments are not a tuple and a str-keyed dict")
        if isinstance(func, type) and issubclass(func, Placeholder):
            return func(*args, **kwargs)
        if func is collections.OrderedDict and len(args) <= 1 and not kwargs:
            return collections.OrderedDict(*args)
        if not kwargs and any(func is allowed for allowed in self._allowed.values()):
            return func(*args)
        raise CheckpointError(f"the pickle calls {_describe(func)}, which no checkpoint does")

    def _instantiate(self, klass: Any, args: list) -> None:
        self.append(self._call(klass, tuple(args), {}))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, {})

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if cls is collections.OrderedDict:
            return collections.OrderedDict()
        if not (isinstance(cls, type) and issubclass(cls, Placeholder)):
            raise CheckpointError(f"the pickle creates {_describe(cls)}, which no checkpoint does")
        return self._call(cls, args, kwargs)

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Placeholder):
            inst.__setstate__(state)
        elif type(inst) is collections.OrderedDict and isinstance(state, dict) \
                and all(isinstance(k, str) for k in state):
            inst.__dict__.update(state)  # torch's state_dict keeps `_metadata` here
        else:
            raise CheckpointError(f"the pickle sets the state of {_describe(inst)}, which no checkpoint does")

    def _target(self, kinds: tuple[type, ...], what: str) -> Any:
        target = self.stack[-1]
        if not isinstance(target, kinds):
            raise CheckpointError(f"corrupt pickle: {what} on {_describe(target)}")
        return target

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target((list, Placeholder), "APPEND").append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list, Placeholder), "APPENDS").extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target((dict, Placeholder), "SETITEM")[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target((dict, Placeholder), "SETITEMS")
        if len(items) % 2:
            raise CheckpointError("corrupt pickle: SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target((set,), "ADDITEMS").update(items)

    # Tuples and frozensets are hashed as dict keys / set members, and hashing recurses in C
    # without a guard: their depth is bounded as they are built, before anything can hash them.
    def _nested(self, value: tuple | frozenset) -> tuple | frozenset:
        depth = 1 + max((self._depth(v) for v in value), default=0)
        if depth > MAX_DEPTH:
            raise CheckpointError(f"the pickle nests tuples more than {MAX_DEPTH} deep: corrupt or hostile")
        if depth > 1:
            self._depths[id(value)] = (value, depth)
        return value

    def _depth(self, value: Any) -> int:
        if isinstance(value, (tuple, frozenset)):
            known = self._depths.get(id(value))
            return known[1] if known is not None and known[0] is value else 1
        return 0

    def load_tuple(self) -> None:
        value = self._nested(tuple(self.pop_mark()))  # pop_mark rebinds self.append
        self.append(value)

    def load_tuple1(self) -> None:
        self.stack[-1] = self._nested((self.stack[-1],))

    def load_tuple2(self) -> None:
        self.stack[-2:] = [self._nested((self.stack[-2], self.stack[-1]))]

    def load_tuple3(self) -> None:
        self.stack[-3:] = [self._nested((self.stack[-3], self.stack[-2], self.stack[-1]))]

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        value = self._nested(frozenset(items))  # its members are tuples already bounded
        self.append(value)

    for _name, _code in _OP.items():
        dispatch[_code] = locals()[f"load_{_name.lower()}"]
    del _name, _code


def _children(obj: Any) -> list | None:
    """The values a tree walk (repr, jax.tree, a converter) would descend into; None for leaves."""
    if isinstance(obj, dict):
        kids = [*obj.keys(), *obj.values()]
        if type(obj) is collections.OrderedDict:
            kids += list(vars(obj).values())
        return kids
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, Placeholder):
        return [obj.args, obj.kwargs, obj.state, obj.items]
    return None


def _check_structure(root: Any) -> None:
    """Refuse what a recursive walk cannot survive: nesting deeper than MAX_DEPTH, a structure that
    contains itself, or shared sub-structures whose tree expansion is out of all proportion.

    One iterative pass, each container expanded once: post-order heights and tree sizes, memoised.
    """
    kids = _children(root)
    if kids is None:
        return
    done: dict[int, tuple[int, int]] = {}  # id -> (height, edges of its tree expansion)
    active = {id(root)}
    frames: list[list[Any]] = [[root, iter(kids), 0, 0]]  # object, children, height, expanded edges
    unique_edges = 0
    end = object()
    while frames:
        frame = frames[-1]
        child = next(frame[1], end)
        if child is end:
            frames.pop()
            active.discard(id(frame[0]))
            done[id(frame[0])] = (frame[2] + 1, frame[3])
            if frames:
                frames[-1][2] = max(frames[-1][2], frame[2] + 1)
                frames[-1][3] += 1 + frame[3]
            continue
        unique_edges += 1
        grandkids = _children(child)
        if grandkids is None:
            frame[3] += 1
            continue
        if id(child) in active:
            raise CheckpointError("the checkpoint's data contains itself (a reference cycle): corrupt or "
                                  "hostile")
        if id(child) in done:
            height, edges = done[id(child)]
            if len(frames) + height > MAX_DEPTH:
                raise CheckpointError(f"the checkpoint's data nests more than {MAX_DEPTH} levels deep")
            frame[2] = max(frame[2], height)
            frame[3] += 1 + edges
            continue
        if len(frames) >= MAX_DEPTH:
            raise CheckpointError(f"the checkpoint's data nests more than {MAX_DEPTH} levels deep")
        active.add(id(child))
        frames.append([child, iter(grandkids), 0, 0])
    if done[id(root)][1] - unique_edges > MAX_SHARED_EXPANSION:
        raise CheckpointError("the checkpoint's data repeats shared sub-structures so often that walking "
                              "it would take billions of steps: corrupt or hostile")


def read_torch_checkpoint(path: str | Path, *, max_bytes: int | None = None) -> Any:
    """Load what `torch.save` wrote at `path`: tensors as numpy arrays, foreign objects as Placeholders.

    `max_bytes` bounds the memory the file can make us allocate (default `default_budget(size)`:
    4 x the file size + 256 MiB, ample for SFM and SeisLM checkpoints of any size); anything
    beyond it is refused with CheckpointError before it is allocated.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if max_bytes is None:
        max_bytes = default_budget(os.path.getsize(path))
    elif isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
    try:
        archive = zipfile.ZipFile(path)
    except Exception as exc:  # BadZipFile, but also ValueError/OSError/struct.error on a mangled directory
        with path.open("rb") as handle:
            head = handle.read(2)
        hint = (" (legacy pre-1.6 torch format: re-save it with a current torch)"
                if head == b"\x80\x02" else "")
        raise CheckpointError(f"{path} is not a PyTorch zip checkpoint{hint}: "
                              f"{type(exc).__name__}: {_describe(str(exc))}") from exc
    try:
        with archive:
            result = _load(archive, _Budget(max_bytes))
        _check_structure(result)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return result


def _load(archive: zipfile.ZipFile, budget: _Budget) -> Any:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
        raise CheckpointError(f"a zip file but not a PyTorch checkpoint (expected one */data.pkl, "
                              f"found {len(pickles)})")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in archive.namelist():
        size = min(archive.getinfo(prefix + "byteorder").file_size, 8)
        raw = _read_member(archive, prefix + "byteorder", size, budget, "record")
        byteorder = raw.decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"byteorder record is {_describe(byteorder)}, not 'little' or 'big': "
                                  "corrupt file")
    size = archive.getinfo(pickles[0]).file_size
    budget.charge(size * PICKLE_MEMORY_FACTOR, f"the pickle ({size:,} bytes, up to "
                                               f"{PICKLE_MEMORY_FACTOR} x in Python objects)")
    data = bytes(_read_member(archive, pickles[0], size, _Budget(size), "pickle"))
    try:
        return _SafeUnpickler(data, archive, prefix, byteorder, budget).load()
    except CheckpointError:
        raise
    except Exception as exc:  # malformed pickle stream: UnpicklingError, EOFError, IndexError ...
        raise CheckpointError(f"corrupt checkpoint ({type(exc).__name__}: {_describe(str(exc))})") from exc


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
