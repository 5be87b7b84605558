"""Reads PyTorch ``torch.save`` checkpoints without torch and without running their code.

torch >= 1.6 writes a zip: ``<prefix>/data.pkl`` (the pickled object), one uncompressed member
``<prefix>/data/<key>`` per storage, ``<prefix>/byteorder`` and version records.  A tensor is
``_rebuild_tensor_v2(storage, offset, size, stride, ...)`` over the persistent id ``('storage',
torch.FloatStorage, key, location, numel)``; newer dtypes (uint16, float8) use
``_rebuild_tensor_v3`` with an UntypedStorage (numel in bytes) and an explicit ``torch.<dtype>``.
Only an allow-list of globals is resolved, to local stand-ins; nothing named is ever imported.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import pickletools
import re
import sys
import threading
import zipfile
from typing import Any, Iterator, NamedTuple

import ml_dtypes
import numpy as np


class CheckpointFormatError(ValueError):
    """The file is not a readable PyTorch zip checkpoint; the message names the file."""


class UnsafeCheckpointError(ValueError):
    """The pickle names a global outside the allow-list; unpickling it could run code."""


_NUMPY_DTYPES = {  # torch dtype name -> numpy dtype
    "float32": np.float32, "float64": np.float64, "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32, "int16": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "complex64": np.complex64,
    "complex128": np.complex128, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
}
_STORAGE_DTYPES = {  # storage class -> torch dtype name
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}
_UNSUPPORTED_DTYPES = set("complex32 qint8 quint8 qint32 quint4x2 quint2x4 float4_e2m1fn_x2 "
                          "bits8 bits16 bits1x8 bits2x4 bits4x2".split())
# Protocol-2 pickles written by Python 3 still spell these modules the Python 2 way.
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
# Refused even with skip_unknown=True: a weights file has no business naming these.
_DENIED_MODULES = set(
    "builtins os posix nt sys subprocess _posixsubprocess importlib pickle _pickle marshal "
    "shutil socket runpy code codeop codecs _codecs ctypes _ctypes types io _io pty signal "
    "multiprocessing threading _thread tempfile webbrowser http urllib asyncio functools "
    "operator inspect gc pdb bdb timeit platform pathlib glob zipimport pkgutil site pip "
    "setuptools distutils ensurepip".split())
# ... except builtin types, which config objects (omegaconf metadata) name as plain values.
_BUILTIN_TYPES = set("dict list tuple set frozenset str bytes int long float complex bool "
                     "object NoneType".split())
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]+")
_CHUNK = 64 << 20  # bytes per read call: bounds the temporary buffers of compressed members


# Stand-ins are immutable tuples, so a pickle's BUILD opcode cannot alter them.
_TorchName = NamedTuple("_TorchName", [("name", str)])  # torch.float32, torch.Tensor
_StorageType = NamedTuple("_StorageType", [("name", str), ("dtype", str)])  # torch.FloatStorage
_Storage = NamedTuple("_Storage", [("key", str), ("dtype", str), ("numel", int)])  # a storage id
_TENSOR, _PARAMETER = _TorchName("Tensor"), _TorchName("Parameter")


class UnknownGlobal:
    """Inert stand-in (skip_unknown mode) for a global neither allow-listed nor denied.

    Each unknown global becomes its own subclass.  Constructing it (REDUCE, NEWOBJ, calling an
    instance), BUILD, APPENDS and SETITEMS only record their arguments, so nothing named in the
    pickle is ever imported or called.
    """

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.kwargs, self.state, self.items, self.mapping = args, kwargs, None, [], {}
        return self

    def __call__(self, *args, **kwargs):
        return type(self)(*args, **kwargs)

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items.append(item)

    def __setitem__(self, key, value):
        self.mapping[key] = value

    def __repr__(self):
        return f"<unresolved {self.qualname}{self.args!r}>"


@dataclasses.dataclass(frozen=True, eq=False)
class LazyTensor:
    """A tensor still on disk: metadata now, bytes on ``load()``."""

    dtype: np.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # in elements, like torch
    offset: int  # storage offset, in elements
    key: str  # storage key: the zip member <prefix>/data/<key>
    archive: _Archive = dataclasses.field(repr=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def span(self) -> int:
        """Elements of the storage, from ``offset`` on, that the tensor touches."""
        dims = (self.shape, self.stride, self.offset)
        if (type(self.shape) is not tuple or type(self.stride) is not tuple
                or len(self.shape) != len(self.stride)
                or any(type(v) is not int or v < 0
                       for v in (*self.shape, *self.stride, self.offset))):
            raise CheckpointFormatError(f"{self.archive.path}: bad tensor geometry {dims!r:.200} "
                                        f"in storage {self.key!r}")
        return 0 if 0 in self.shape else 1 + sum((n - 1) * s for n, s in zip(*dims[:2]))

    def load(self) -> np.ndarray:
        """Reads only this tensor's bytes; returns a fresh C-contiguous array."""
        span, start = self.span(), self.offset * self.dtype.itemsize
        if _is_c_contiguous(self.shape, self.stride):
            return self.archive.read(self.key, start, self.shape, self.dtype)
        flat = self.archive.read(self.key, start, (span,), self.dtype)
        strides = tuple(s * self.dtype.itemsize for s in self.stride)
        view = np.lib.stride_tricks.as_strided(flat, self.shape, strides, writeable=False)
        return np.ascontiguousarray(view)


def _is_c_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


class _Archive:
    """The open zip: locates members and reads byte ranges of storages."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise CheckpointFormatError(_not_a_zip_message(path)) from None
        self._raw = open(path, "rb", buffering=0)  # own handle for seek + readinto
        self._lock = threading.Lock()
        try:
            self.prefix = self._find_prefix()
            order = self._read_record("byteorder", default=b"little")
            if order not in (b"little", b"big"):
                raise CheckpointFormatError(f"{path}: unknown byteorder record {order!r:.40}")
        except BaseException:
            self.close()
            raise
        self.swap_bytes = order.decode() != sys.byteorder

    def _find_prefix(self) -> str:
        pickles = [n for n in self.zip.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointFormatError(
                f"{self.path}: zip archive has {len(pickles)} '<prefix>/data.pkl' members, "
                "expected one: not a checkpoint written by torch.save (PyTorch >= 1.6)")
        return pickles[0].split("/")[0]

    def _read_record(self, name: str, default: bytes) -> bytes:
        try:
            return self.zip.read(f"{self.prefix}/{name}").strip()
        except KeyError:
            return default

    def read_pickle(self) -> bytes:
        return self.zip.read(f"{self.prefix}/data.pkl")

    def storage_info(self, key: str) -> zipfile.ZipInfo:
        name = f"{self.prefix}/data/{key}"
        try:
            return self.zip.getinfo(name)
        except KeyError:
            raise CheckpointFormatError(
                f"{self.path}: storage member {name!r} is missing") from None

    def read(self, key: str, start: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Storage ``key``'s bytes from ``start`` on, as a new array of ``shape``."""
        if self._raw.closed:
            raise ValueError(f"{self.path}: checkpoint is closed; load tensors inside "
                             "the `with open_checkpoint(...)` block")
        info, nbytes = self.storage_info(key), math.prod(shape) * dtype.itemsize
        if start + nbytes > info.file_size:  # checked before allocating anything
            raise CheckpointFormatError(
                f"{self.path}: storage {info.filename!r} has {info.file_size} bytes but a tensor "
                f"needs bytes {start}..{start + nbytes} (truncated or corrupt file)")
        out = np.empty(shape, dtype)
        flat = memoryview(out.reshape(-1).view(np.uint8))
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
            with self._lock:
                self._raw.seek(self._data_offset(info) + start)
                self._read_fully(self._raw, flat, info.filename)
        else:  # re-zipped with compression: stream through the decompressor
            with self.zip.open(info) as f:
                while start:
                    start -= len(f.read(min(start, _CHUNK)))
                self._read_fully(f, flat, info.filename)
        if self.swap_bytes:
            out.byteswap(inplace=True)
        return out

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a stored member's bytes begin.  torch pads the *local* header's extra field to
        align storages, so the central directory's lengths don't tell."""
        self._raw.seek(info.header_offset)
        header = self._raw.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointFormatError(f"{self.path}: corrupt zip header for {info.filename!r}")
        name_len, extra_len = (int.from_bytes(header[i:i + 2], "little") for i in (26, 28))
        return info.header_offset + 30 + name_len + extra_len

    def _read_fully(self, f: Any, flat: memoryview, name: str) -> None:
        pos = 0
        while pos < len(flat):
            n = f.readinto(flat[pos:pos + _CHUNK])
            if not n:
                raise CheckpointFormatError(f"{self.path}: storage {name!r} ends early (truncated)")
            pos += n

    def close(self) -> None:
        self.zip.close()
        self._raw.close()


def _not_a_zip_message(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return (f"{path}: truncated or corrupt zip archive (its central directory is missing); "
                "download or save the checkpoint again")
    if head[:1] == b"\x80":
        return (f"{path}: legacy (non-zip) torch.save format from PyTorch < 1.6 or "
                "_use_new_zipfile_serialization=False; re-save it with a recent torch: "
                "torch.save(torch.load(old, weights_only=True), new)")
    return (f"{path}: not a zip archive; expected a PyTorch >= 1.6 zip checkpoint written by "
            "torch.save")


class _Unpickler(pickle.Unpickler):
    """Resolves an allow-list of globals to stand-ins; imports and calls nothing else."""

    def __init__(self, data: bytes, archive: _Archive, skip_unknown: bool):
        super().__init__(io.BytesIO(data))
        self.archive, self.path, self.skip_unknown = archive, archive.path, skip_unknown
        self.storages: dict[str, _Storage] = {}
        self.unknown: dict[str, type] = {}
        # Only immutable types and bound methods: a pickle's BUILD can't set attributes on them.
        self.allowed: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter,
            ("torch._tensor", "_rebuild_from_type_v2"): self._rebuild_from_type_v2,
            ("torch", "Tensor"): _TENSOR, ("torch._tensor", "Tensor"): _TENSOR,
            ("torch.nn.parameter", "Parameter"): _PARAMETER,
            ("torch", "Size"): tuple, ("torch", "device"): self._device,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("collections", "Counter"): self._counter,  # a Python class, so not itself
            ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
            ("builtins", "slice"): slice, ("builtins", "complex"): complex,
            ("_codecs", "encode"): self._encode,
        }

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        qualname = f"{module}.{name}"
        if (module, name) in self.allowed:
            return self.allowed[module, name]
        if module == "torch" and name in _NUMPY_DTYPES:
            return _TorchName(name)
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch" and (name.endswith("Storage") or name in _UNSUPPORTED_DTYPES):
            raise CheckpointFormatError(f"{self.path}: unsupported storage dtype torch.{name}")
        if module.split(".")[0] in _DENIED_MODULES and not (
                module == "builtins" and name in _BUILTIN_TYPES):
            raise UnsafeCheckpointError(
                f"{self.path}: refusing to unpickle global '{qualname}': unpickling it could "
                "execute code and no weights file needs it, so the file is likely malicious. "
                "Do not load it with torch.load either.")
        if not self.skip_unknown:
            raise UnsafeCheckpointError(
                f"{self.path}: refusing to unpickle global '{qualname}': it is not on the "
                "allow-list for tensor checkpoints, and unpickling arbitrary globals may execute "
                "code. If you trust the file and need only its tensors, open it with "
                "skip_unknown=True, which turns unknown objects into inert placeholders.")
        if qualname not in self.unknown:
            self.unknown[qualname] = type(name, (UnknownGlobal,), {"qualname": qualname})
        return self.unknown[qualname]

    def persistent_load(self, pid: Any) -> _Storage:
        """Checks a storage id against its zip member; reads none of its bytes."""
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
            raise CheckpointFormatError(f"{self.path}: unsupported persistent id {pid!r:.100}")
        _, storage_type, key, location, numel = pid
        if (not isinstance(storage_type, _StorageType) or type(key) is not str
                or not _STORAGE_KEY.fullmatch(key) or type(location) is not str
                or type(numel) is not int or numel < 0):
            raise CheckpointFormatError(f"{self.path}: malformed storage id {pid!r:.100}")
        storage = _Storage(key, storage_type.dtype, numel)
        if self.storages.setdefault(key, storage) != storage:
            raise CheckpointFormatError(f"{self.path}: storage {key!r} declared twice differently")
        info, nbytes = self.archive.storage_info(key), numel * _itemsize(storage.dtype)
        if info.file_size < nbytes:
            raise CheckpointFormatError(
                f"{self.path}: storage {info.filename!r} has {info.file_size} bytes, "
                f"{nbytes} expected (truncated or corrupt file)")
        return storage

    def _tensor(self, storage: Any, dtype: str | None, offset: Any, size: Any,
                stride: Any) -> LazyTensor:
        """A LazyTensor over ``storage``, checked to fit in the storage's declared size."""
        if not isinstance(storage, _Storage):
            raise CheckpointFormatError(f"{self.path}: tensor rebuilt from a non-storage")
        as_tuple = lambda v: tuple(v) if type(v) in (tuple, list) else v  # noqa: E731
        dtype = dtype or storage.dtype
        tensor = LazyTensor(np.dtype(_NUMPY_DTYPES[dtype]), as_tuple(size), as_tuple(stride),
                            offset, storage.key, self.archive)
        storage_bytes = storage.numel * _itemsize(storage.dtype)
        if (offset + tensor.span()) * _itemsize(dtype) > storage_bytes:
            raise CheckpointFormatError(
                f"{self.path}: tensor of shape {tensor.shape} at offset {offset} does not fit "
                f"in storage {storage.key!r} of {storage_bytes} bytes")
        return tensor

    def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None) -> LazyTensor:
        return self._tensor(storage, None, offset, size, stride)

    def _rebuild_tensor_v3(self, storage, offset, size, stride, requires_grad, backward_hooks,
                           dtype, metadata=None) -> LazyTensor:
        if not isinstance(dtype, _TorchName) or dtype.name not in _NUMPY_DTYPES:
            raise CheckpointFormatError(f"{self.path}: bad tensor dtype {dtype!r:.60}")
        return self._tensor(storage, dtype.name, offset, size, stride)

    def _rebuild_parameter(self, data, requires_grad, backward_hooks, state=None) -> Any:
        return data  # a parameter is its tensor; grad flags and python state are dropped

    def _rebuild_from_type_v2(self, func, new_type, args, state) -> Any:
        """A tensor with python attributes: keep the tensor, drop the attributes."""
        known = new_type in (_TENSOR, _PARAMETER) or new_type in self.unknown.values()
        if not known or func not in (self._rebuild_tensor_v2, self._rebuild_tensor_v3):
            raise CheckpointFormatError(f"{self.path}: unsupported tensor type {new_type!r:.60}")
        return func(*args)

    def _device(self, kind: Any, index: Any = None) -> str:
        """``torch.device('cuda', 0)`` becomes the string 'cuda:0'."""
        if type(kind) is not str or index is not None and type(index) is not int:
            raise CheckpointFormatError(f"{self.path}: unexpected torch.device arguments")
        return kind if index is None else f"{kind}:{index}"

    def _counter(self, *args: Any) -> collections.Counter:
        return collections.Counter(*args)

    def _encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        """How protocol 2 spells bytes: ``_codecs.encode(str, 'latin1')``."""
        if type(text) is not str or encoding not in ("latin1", "latin-1"):
            raise CheckpointFormatError(f"{self.path}: unexpected _codecs.encode arguments")
        return text.encode("latin1")


def _itemsize(torch_dtype: str) -> int:
    return np.dtype(_NUMPY_DTYPES[torch_dtype]).itemsize


def _check_opcodes(data: bytes, path: str) -> None:
    """Refuses, before unpickling, EXT* opcodes (they resolve through copyreg's process-wide
    cache, bypassing find_class) and memo PUTs with huge indices (the C unpickler would allocate
    a memo table of that size)."""
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name.startswith("EXT"):
                raise UnsafeCheckpointError(
                    f"{path}: refusing pickle opcode {op.name}: it loads globals from copyreg's "
                    "registry, bypassing the allow-list")
            if op.name.endswith("PUT") and arg > len(data):  # more than there are opcodes
                raise CheckpointFormatError(f"{path}: corrupt data.pkl (memo index {arg})")
    except (CheckpointFormatError, UnsafeCheckpointError):
        raise
    except Exception as e:
        raise CheckpointFormatError(f"{path}: data.pkl is not a valid pickle ({e})") from None


class Checkpoint:
    """An open checkpoint; ``root`` has LazyTensor leaves that read from the open archive."""

    def __init__(self, archive: _Archive, root: Any):
        self.archive, self.root, self.path = archive, root, archive.path

    def close(self) -> None:
        self.archive.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_checkpoint(path: Any, *, skip_unknown: bool = False) -> Checkpoint:
    """Unpickles ``path``'s structure without reading tensor bytes or running its code.

    skip_unknown=False accepts only tensors, containers and a few builtins; True turns other
    objects (argparse / omegaconf configs, fairseq classes) into UnknownGlobal placeholders.
    """
    archive = _Archive(str(path))
    try:
        data = archive.read_pickle()
        _check_opcodes(data, archive.path)
        root = _Unpickler(data, archive, skip_unknown).load()
    except (CheckpointFormatError, UnsafeCheckpointError):
        archive.close()
        raise
    except Exception as e:
        archive.close()
        raise CheckpointFormatError(f"{archive.path}: could not unpickle data.pkl "
                                    f"({type(e).__name__}: {e})") from e
    return Checkpoint(archive, root)


def iter_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, LazyTensor]]:
    """Yields ``(dotted_key, tensor)`` for every LazyTensor in nested dicts, lists and tuples."""
    if isinstance(obj, LazyTensor):
        yield prefix, obj
    elif isinstance(obj, (dict, list, tuple)):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for key, value in items:
            yield from iter_tensors(value, f"{prefix}.{key}" if prefix else str(key))
