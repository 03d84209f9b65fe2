"""Read a pickled torch file (``torch.save``) without running anything it names.

A torch checkpoint is a pickle: a little program that names globals (``module.Name``) and calls
them (REDUCE) to rebuild objects. ``torch.load(weights_only=False)`` imports and calls whatever the
file names, which is how a downloaded checkpoint can run ``os.system``. This reader executes the
pickle under a policy instead:

- every global the file names goes through :meth:`Policy.resolve`. An allowed *class* (a YOLOv5 or
  ``torch.nn`` module, ...) resolves to an inert :class:`Placeholder` subclass of the same name:
  building one (NEWOBJ) makes an empty object, BUILD fills its ``__dict__`` with plain data, and
  *calling* it (REDUCE, INST, OBJ) is refused. An allowed *function* resolves to our own
  implementation (the tensor-rebuild functions, ``OrderedDict``, ``torch.Size``, ...) that only
  builds data. Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``) is refused
  before it is imported: :class:`UnsafePickleError` names it.
- tensor storages are read from the file's own records (zip format) or from the bytes after the
  pickle (legacy format) as flat tensors; tensors are views of them, bounds-checked by torch.

The pickle protocol has only two hooks to the outside world, ``find_class`` (every global,
including the copyreg extension codes) and ``persistent_load`` (storages), so nothing else can be
reached. The result is a tree of dicts, lists, tensors and placeholders for the caller to read.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from efyolo.errors import EfyoloError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER (the non-zip format)
LEGACY_PROTOCOL = 1001


class UnsafePickleError(EfyoloError):
    """The file names a global outside the policy, or tries to call one: nothing was run."""


class NotATorchFileError(EfyoloError):
    """The file is a pickle, but not one ``torch.save`` wrote (no torch magic number)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"weights file {path} is not a torch checkpoint ({reason})")
        self.reason = reason


class Placeholder:
    """An inert stand-in for an object of class ``_global`` (``"models.common.Conv"``).

    Instances only hold data: BUILD's state goes into ``__dict__`` (or ``_state`` when it is not a
    dict). Subclasses are made per global by :func:`placeholder_class`.
    """

    _global = "?"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], (dict, type(None))):
            state, slots = state  # (dict state, slot state), as object.__reduce_ex__ writes it
            for key, value in (slots or {}).items():
                self.__dict__[str(key)] = value
        if isinstance(state, dict):
            for key, value in state.items():
                self.__dict__[str(key)] = value
        elif state is not None:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<placeholder {self._global}>"


class _RefuseCall(type):
    """Metaclass of placeholders: creating one through a call (REDUCE / INST / OBJ) is refused."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(f"the file calls {cls._global} (a REDUCE on a class that is not an allowed "
                                "rebuild function); refused, nothing was run")


def placeholder_class(qualname: str) -> type:
    """A fresh :class:`Placeholder` subclass standing for ``qualname`` (``"module.Name"``)."""
    module, _, name = qualname.rpartition(".")
    return _RefuseCall(name, (Placeholder,), {"_global": qualname, "__module__": f"placeholder:{module}"})


@dataclass
class Recorded:
    """What an allowed-but-inert call left: the global's name and its arguments (e.g. a numpy array)."""

    func: str
    args: tuple
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def recorder(qualname: str) -> Callable[..., Recorded]:
    """An allowed function that builds nothing: it records its arguments."""
    return lambda *args: Recorded(qualname, args)


@dataclass(frozen=True)
class StorageType:
    """``torch.HalfStorage`` and friends, as named in a persistent id: only the dtype matters."""

    dtype: torch.dtype


# --------------------------------------------------------------------------------------------
# The allowed functions: each builds plain data from plain data
# --------------------------------------------------------------------------------------------


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` (and v1): a view of a flat storage tensor."""
    if not isinstance(storage, torch.Tensor):
        raise UnsafePickleError("a tensor is rebuilt from something that is not a storage of this file")
    try:
        return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))
    except (RuntimeError, TypeError, ValueError) as err:  # out of the storage's bounds, bad shapes
        raise EfyoloError(f"a tensor of the file does not fit its storage ({str(err).splitlines()[0][:120]})") from None


def _rebuild_parameter(data: Any, *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_parameter[_with_state]``: the tensor itself (no ``nn.Parameter``)."""
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("a parameter is rebuilt from something that is not a tensor")
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    return collections.OrderedDict(*args) if args and isinstance(args[0], (list, tuple, dict)) else collections.OrderedDict()


def _size(*args: Any) -> tuple:
    return tuple(int(v) for v in (args[0] if args else ()))


def _device(*args: Any) -> str:
    return str(args[0]) if args else "cpu"  # a device name: data, never a torch.device call on file input


def _path(*parts: Any) -> str:
    return "/".join(str(p) for p in parts)


def _plain(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset, dict, str, bytes))):
            raise UnsafePickleError(f"the file builds a {kind.__name__} from {type(args[0]).__name__}")
        return kind(*args)
    return build


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode``: how protocol 2 writes a ``bytes`` object (numpy arrays' raw data)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("the file calls _codecs.encode on something other than latin-1 text")
    return text.encode("latin1")


TORCH_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "_codecs.encode": _latin1_bytes,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "collections.OrderedDict": _ordered_dict,
    "torch.Size": _size,
    "torch.device": _device,
    "builtins.set": _plain(set),
    "builtins.frozenset": _plain(frozenset),
    "pathlib.PosixPath": _path,
    "pathlib.WindowsPath": _path,
    "pathlib.Path": _path,
    # numpy values (YOLOv5's best_fitness): recorded, never rebuilt by numpy
    "numpy.core.multiarray._reconstruct": recorder("numpy.ndarray"),
    "numpy._core.multiarray._reconstruct": recorder("numpy.ndarray"),
    "numpy.core.multiarray.scalar": recorder("numpy.scalar"),
    "numpy._core.multiarray.scalar": recorder("numpy.scalar"),
    "numpy.dtype": recorder("numpy.dtype"),
}
# ``torch.float16`` etc. are values, not calls
TORCH_DTYPES = {f"torch.{n}": v for n, v in vars(torch).items() if isinstance(v, torch.dtype)}
TORCH_STORAGES = {
    f"torch.{name}": StorageType(dtype)
    for name, dtype in {
        "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
        "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
        "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
        "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    }.items()
}


@dataclass
class Policy:
    """Which globals a file may name.

    Args:
        class_prefixes: module prefixes whose classes become placeholders (``"models."``,
            ``"torch.nn.modules."``); a name must be a plain identifier.
        extra_classes: single ``module.Name`` globals that become placeholders.
        recorded: functions whose calls are only recorded (:class:`Recorded`), never made: YOLOv5's
            Segment head pickles ``getattr(Detect, "forward")``; recording it runs no lookup.
    """

    class_prefixes: tuple[str, ...] = ("torch.nn.modules.",)
    extra_classes: frozenset[str] = frozenset({"numpy.ndarray"})  # an argument of numpy's _reconstruct
    recorded: frozenset[str] = frozenset()
    seen: set[str] = field(default_factory=set)

    def resolve(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if not (_identifier_path(module) and name.isidentifier()):
            raise UnsafePickleError(f"the file names the global {qualname!r}, which is not a plain name; refused")
        self.seen.add(qualname)
        if qualname in TORCH_FUNCTIONS:
            return TORCH_FUNCTIONS[qualname]
        if qualname in TORCH_DTYPES:
            return TORCH_DTYPES[qualname]
        if qualname in TORCH_STORAGES:
            return TORCH_STORAGES[qualname]
        if qualname in self.recorded:
            return recorder(qualname)
        if qualname in self.extra_classes or any(qualname.startswith(p) for p in self.class_prefixes):
            return placeholder_class(qualname)
        alias = f" (os.{name})" if module in ("posix", "nt") else ""
        raise UnsafePickleError(f"the file names the global {qualname}{alias}, which a checkpoint has no reason to hold "
                                "(it could run code); refused, nothing was run")


def _identifier_path(module: str) -> bool:
    return bool(module) and all(part.isidentifier() for part in module.split("."))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, policy: Policy, load_storage: Callable[[tuple], torch.Tensor]):
        super().__init__(file, encoding="utf-8")
        self._policy = policy
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:  # every GLOBAL, STACK_GLOBAL, INST and EXT code
        # protocol-2 pickles spell Python 2's names (``__builtin__.set``): translate them as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return self._policy.resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "module" and isinstance(pid[1], _RefuseCall):
            return pid[1]  # legacy format: ('module', class, source file, source) stands for the class itself
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafePickleError(f"the file holds a persistent id {str(pid)[:60]!r} that is not a tensor storage")
        return self._load_storage(pid)


def _storage_spec(pid: tuple) -> tuple[torch.dtype, str, int]:
    """``('storage', StorageType, key, location, numel[, view])`` -> (dtype, key, numel)."""
    if len(pid) < 5 or not isinstance(pid[1], StorageType):
        raise UnsafePickleError(f"the file holds a storage of an unknown type ({str(pid[1:2])[:60]})")
    return pid[1].dtype, str(pid[2]), int(pid[4])


def _flat(buffer: bytes, dtype: torch.dtype, numel: int, where: str) -> torch.Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(buffer) < numel * itemsize:
        raise EfyoloError(f"{where}: a tensor storage is truncated ({len(buffer)} of {numel * itemsize} bytes)")
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(buffer[: numel * itemsize]), dtype=dtype)


def _swap_if_big_endian(t: torch.Tensor, byteorder: str) -> torch.Tensor:
    if byteorder == sys.byteorder or t.element_size() == 1:
        return t
    raw = t.view(torch.uint8).view(-1, t.element_size()).flip(1).contiguous()
    return raw.view(-1).view(t.dtype)


def read_zip(path: Path, policy: Policy) -> Any:
    """A ``torch.save`` zip archive: ``<root>/data.pkl`` plus one record per storage in ``<root>/data/``."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise EfyoloError(f"weights file {path} is a zip archive without data.pkl: not a torch checkpoint")
        root = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{root}byteorder" in names:
            byteorder = archive.read(f"{root}byteorder").decode("ascii", "replace").strip() or "little"
        cache: dict[str, torch.Tensor] = {}

        def load_storage(pid: tuple) -> torch.Tensor:
            dtype, key, numel = _storage_spec(pid)
            if key not in cache:
                record = f"{root}data/{key}"
                if record not in names:
                    raise EfyoloError(f"weights file {path} is damaged: storage record {record} is missing")
                cache[key] = _swap_if_big_endian(_flat(archive.read(record), dtype, numel, f"weights file {path}"),
                                                 byteorder)
            return cache[key]

        with archive.open(pkl[0]) as f:
            return _Unpickler(f, policy, load_storage).load()


def read_legacy(path: Path, policy: Policy) -> Any:
    """The non-zip format: magic, protocol and sys-info pickles, the object pickle, the storage
    keys, then each storage as an int64 element count and its raw bytes (little-endian)."""
    data = path.read_bytes()
    f = io.BytesIO(data)
    header = _PlainUnpickler(f)  # the header is three plain values
    try:
        magic = header.load()
    except UnsafePickleError as err:  # a plain pickle of objects, not torch.save's format
        raise NotATorchFileError(path, f"a plain pickle; {err}") from None
    if magic != LEGACY_MAGIC or header.load() != LEGACY_PROTOCOL:
        raise NotATorchFileError(path, "no torch magic number")
    sys_info = header.load()
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    storages: dict[str, tuple[torch.Tensor, torch.dtype]] = {}

    def load_storage(pid: tuple) -> torch.Tensor:
        dtype, key, numel = _storage_spec(pid)
        if key not in storages:
            itemsize = torch.empty((), dtype=dtype).element_size()
            if numel < 0 or numel * itemsize > len(data):
                raise EfyoloError(f"weights file {path} is damaged: a storage claims {numel} elements")
            storages[key] = (torch.empty(numel, dtype=dtype), dtype)
        return storages[key][0]

    obj = _Unpickler(f, policy, load_storage).load()
    order = _PlainUnpickler(f).load()
    if not isinstance(order, list):
        raise EfyoloError(f"weights file {path} is damaged: no storage key list after the object")
    for key in order:
        flat, dtype = storages.get(str(key), (None, None))
        if flat is None:
            raise EfyoloError(f"weights file {path} is damaged: storage {key} has no tensor")
        head = f.read(8)
        if len(head) < 8:
            raise EfyoloError(f"weights file {path} is truncated (storage {key})")
        (numel,) = struct.unpack("<q" if little else ">q", head)
        itemsize = flat.element_size()
        if numel != flat.numel():
            raise EfyoloError(f"weights file {path} is damaged: storage {key} holds {numel} elements, not {flat.numel()}")
        flat.copy_(_swap_if_big_endian(_flat(f.read(numel * itemsize), dtype, numel, f"weights file {path}"),
                                       "little" if little else "big"))
    return obj


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy format's header and key list: plain values, no globals, no storages."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"it names the global {module}.{name}; refused, nothing was run")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("the file's header holds a persistent id; refused")


def read_torch_file(path: str | Path, policy: Policy) -> Any:
    """Load ``path`` (zip or legacy ``torch.save`` format) under ``policy``; see the module docstring.

    Raises:
        UnsafePickleError: the file names a global outside the policy or calls a class.
        EfyoloError: the file is missing, truncated or not a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise EfyoloError(f"weights file {path} does not exist")
    try:
        if zipfile.is_zipfile(path):
            return read_zip(path, policy)
        return read_legacy(path, policy)
    except NotATorchFileError:
        raise
    except UnsafePickleError as err:
        raise UnsafePickleError(f"weights file {path}: {err}") from None
    except EfyoloError:
        raise
    except Exception as err:  # noqa: BLE001 - damaged bytes fail in many ways (KeyError, struct.error, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EfyoloError(f"weights file {path} is truncated or damaged ({first[:160]})") from None


def module_tree_state(root: Placeholder, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a placeholder ``nn.Module`` tree: ``_parameters`` and persistent
    ``_buffers`` of every ``_modules`` child, under ``nn.Module``'s dotted key names."""
    out: dict[str, torch.Tensor] = {}
    state = vars(root)
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise EfyoloError(f"module {prefix or 'root'}: {group} entry {name!r} is not a tensor")
            out[prefix + str(name)] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Placeholder):
            raise EfyoloError(f"module {prefix or 'root'}: child {name!r} is not a module")
        out.update(module_tree_state(child, f"{prefix}{name}."))
    return out


def iter_modules(root: Placeholder, prefix: str = "") -> Iterable[tuple[str, Placeholder]]:
    """``(dotted name, placeholder)`` for the root and every submodule, like ``nn.Module.named_modules``."""
    yield prefix.rstrip("."), root
    for name, child in (vars(root).get("_modules") or {}).items():
        if isinstance(child, Placeholder):
            yield from iter_modules(child, f"{prefix}{name}.")
