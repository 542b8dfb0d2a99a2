"""instanttensor: safetensors checkpoints into memory at the speed of the hardware.

The same loader as the C++ headers, in the names PyTorch users know::

    import instanttensor as it
    with it.safe_open("model/", framework="pt", device="cpu") as f:   # a file, a list, a directory or an index
        f.keys(); f.metadata(); f.get_tensor(name); f.get_slice(name)[:, 128:256]
        for name, tensor in f.tensors(): ...                          # the fast path, in file order
    it.load_file("model/", device="cuda:0")                            # {name: tensor}
    it.load_into(model, "model/", strict=True)                        # into the existing parameters

Every tensor returned is the caller's: it stays valid after the next one, after the ``with``
block and after the loader is gone (no ``clone()`` needed). Host tensors are allocated by the
library per tensor and freed with the tensor; device tensors are allocated through torch's
allocator and the bytes land in them directly.

Dtypes map as safetensors maps them (F4 as torch's float4_e2m1fn_x2: two per byte, the last
dimension halved). One the framework lacks (numpy: BF16 and the 8-, 6- and 4-bit floats; torch:
F6_E2M3, F6_E3M2, those its version predates, and F4 with an odd last dimension) comes back as its
raw bytes: a flat uint8 tensor of the tensor's size in bytes (``get_slice(name).get_dtype()`` and
``get_shape()`` say what they hold).

Errors are ``instanttensor.Error`` (see ``instanttensor.errors``): a malformed checkpoint is also a
``ValueError``, a failed read an ``OSError`` with its ``errno``; each message names the file.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Union

from . import _core
from ._group import NOTHING, SPLIT, Group, Keep, Split, SplitRows, splits_of
from .errors import CudaError, Error, FormatError, IntegrityError, IoError, NcclError, UnavailableError, UsageError

__all__ = [
    "safe_open", "load_file", "load_into", "IncompatibleKeys", "TensorSlice",
    "Error", "FormatError", "IntegrityError", "IoError", "UsageError", "UnavailableError", "CudaError", "NcclError",
]
__version__ = _core.version

PathLike = Union[str, "os.PathLike[str]"]
Paths = Union[PathLike, Iterable[PathLike]]

# safetensors dtype → the framework's dtype name; absent: raw bytes.
_TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "C64": "complex64",
    "F64": "float64", "I64": "int64", "U64": "uint64", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}
_NUMPY_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
    "I32": "int32", "U32": "uint32", "F32": "float32", "C64": "complex64", "F64": "float64",
    "I64": "int64", "U64": "uint64",
}


# The dtypes DLPack names: the module hands these out with their dtype and shape (no view after).
_DLPACK_DTYPES = ("BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64")


def _typed_dtypes(framework: str) -> list[str]:
    """The dtypes of `_DLPACK_DTYPES` that `framework` has."""
    if framework == "pt":
        import torch
        return [d for d in _DLPACK_DTYPES if hasattr(torch, _TORCH_DTYPES[d])]
    return [d for d in _DLPACK_DTYPES if d in _NUMPY_DTYPES]


def _layout(dtype: str, shape, nbytes: int, framework: str):
    """(the framework's dtype, shape) a checkpoint tensor comes back as: its own, or raw bytes."""
    if framework == "pt":
        import torch
        if dtype == "F4":  # two per byte, the last dimension halved, as safetensors returns it
            packed = getattr(torch, "float4_e2m1fn_x2", None)
            if packed is not None and shape and shape[-1] % 2 == 0:
                return packed, tuple(shape[:-1]) + (shape[-1] // 2,)
            return torch.uint8, (nbytes,)
        typed = getattr(torch, _TORCH_DTYPES.get(dtype, ""), None)
        return (typed, tuple(shape)) if typed is not None else (torch.uint8, (nbytes,))
    import numpy
    name = _NUMPY_DTYPES.get(dtype)
    return (numpy.dtype(name), tuple(shape)) if name else (numpy.dtype("uint8"), (nbytes,))


def _typed(flat, layout, framework: str):
    """The flat uint8 `flat` seen in `layout` (the same memory)."""
    dtype, shape = layout
    if framework == "pt":
        return flat.view(dtype).view(shape)
    return flat.view(dtype).reshape(shape)


def _path_list(paths: Paths) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    listed = [os.fspath(p) for p in paths]
    if not listed:
        raise UsageError("instanttensor: no checkpoint path given")
    return listed


def _cuda_index(device, framework: str) -> int:
    """-1 for host memory, else the CUDA device index `device` names."""
    if device is None or device == "cpu":
        return -1
    if framework == "np":
        raise UsageError(f"instanttensor: framework='np' loads to host memory only, not to {device!r}")
    import torch
    d = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if d.type == "cpu":
        return -1
    if d.type != "cuda":
        raise UsageError(f"instanttensor: loads go to 'cpu' or a CUDA device, not {device!r}")
    return d.index if d.index is not None else torch.cuda.current_device()


class _Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total_bytes: int, label: str):
        self.total, self.label, self.done = total_bytes, label, 0
        self.start = self.drawn = time.monotonic()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.drawn >= 0.1 or self.done >= self.total:
            self.drawn = now
            fraction = self.done / self.total if self.total else 1.0
            bar = "#" * int(fraction * 30)
            rate = self.done / max(now - self.start, 1e-9) / 1e9
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {fraction:4.0%} "
                             f"{self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB {rate:.2f} GB/s")
            sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class _Options(NamedTuple):
    backend: str = "auto"
    direct: str = "auto"
    staging_bytes: int | None = None
    slot_bytes: int | None = None
    progress: bool = False
    digests: Any = None  # a _core.Digests to verify against
    file_digests: Any = None  # a _core.FileDigests to hash whole files against
    key: Any = None  # a _core.Key to decrypt with

    def request(self, names: list[str] | None, device: int, stream: int = 0):
        r = _core.LoadRequest()
        r.names, r.device, r.backend, r.direct, r.stream = names, device, self.backend, self.direct, stream
        r.staging_bytes, r.slot_bytes = self.staging_bytes or 0, self.slot_bytes or 0
        r.verify = self.digests
        r.verify_files = self.file_digests
        if self.key is not None:
            r.key = self.key
        return r


class _Shares(NamedTuple):
    """A group load's shares: the group, and what each rank keeps of each name (Group.share_table)."""
    group: Group
    table: bytes


def _begin(checkpoint, names: list[str] | None, options: _Options, framework: str, device_index: int,
           destinations: Mapping[str, Any] | None, shares: _Shares | None = None,
           block: tuple[int, int, int] | None = None):
    """The module's load of `names` of `checkpoint` (None: every tensor), alone or as one rank of
    `shares.group`; of each tensor, `block` where given, (dim, first, count). `destinations` maps
    each tensor it yields to the torch tensor its bytes land in (required on the device)."""
    stream = 0
    if device_index >= 0:
        import torch
        stream = torch.cuda.current_stream(device_index).cuda_stream
    pointers = None
    if destinations is not None:
        pointers = {n: (t.data_ptr(), t.numel() * t.element_size()) for n, t in destinations.items()}
    request = options.request(names, device_index, stream)
    if shares is not None:
        request.group, request.shares = shares.group, shares.table
    request.block = block
    return _core.Load(checkpoint, request, framework, pointers, _typed_dtypes(framework))


def _landing(checkpoint, names: list[str], options: _Options, framework: str, device_index: int,
             destinations: Mapping[str, Any] | None, sizes: Mapping[str, int],
             shares: _Shares | None = None, block: tuple[int, int, int] | None = None) -> Iterator[tuple[str, Any]]:
    """Loads `names` as `_begin` does; yields (name, array or None, typed) in load order, for the
    tensors this rank keeps: the array of its dtype and shape where typed, else flat uint8.
    `sizes` maps each yielded name to its bytes, for the progress bar.
    """
    # Every tensor, alone, is asked for as no selection at all: the module then sorts and searches
    # no list. (A group load's shares are listed by name.)
    everything = shares is None and len(names) == len(checkpoint) and len(set(names)) == len(names)
    load = _begin(checkpoint, None if everything else names, options, framework, device_index, destinations, shares, block)
    progress = None
    if options.progress:
        progress = _Progress(sum(sizes.values()), "loading")
    try:
        for name, array, typed in load:
            if progress:
                progress.advance(sizes[name])
            yield name, array, typed
    finally:
        load.close()
        if shares is not None:
            shares.group.finish()
        if progress:
            progress.finish()


class TensorSlice:
    """One tensor of an open checkpoint, indexed as safetensors' ``get_slice`` returns it.

    ``get_shape()`` and ``get_dtype()`` read the header only; indexing returns a tensor of its own
    holding the selected part, read as the block of the first dimension the index narrows (for
    ``[a:b]``, only those rows; for ``[:, a:b]``, the rows it spans, of which only the block lands).
    """

    def __init__(self, owner: "safe_open", name: str):
        self._owner, self._name = owner, name
        self._dtype, self._shape, self._nbytes, _ = owner._checkpoint.describe(name)

    def get_shape(self) -> list[int]:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def __getitem__(self, index):
        block, rest = self._block(index)
        if self._owner._options.digests is not None:  # a digest covers the whole tensor: read it all, verified
            block, rest = None, index
        if block is None:  # nothing to narrow, or an index only the framework understands
            whole = self._owner.get_tensor(self._name)
        else:
            self._owner._open([self._name])
            whole = next(iter(self._owner._load([self._name], None, block)))[1]
        part = whole[rest]
        if self._owner._framework == "pt":
            return part.clone() if part.data_ptr() != whole.data_ptr() or part.numel() != whole.numel() else part
        return part.copy() if part.base is not None else part

    def _block(self, index) -> tuple[tuple[int, int, int] | None, Any]:
        """The block of the first dimension that `index` narrows, (dim, first, count), and the index
        into that block; (None, index) where no dimension is narrowed or the index holds other
        than integers and slices of positive step (Ellipsis, None, lists, tensors)."""
        parts = index if isinstance(index, tuple) else (index,)
        if len(parts) > len(self._shape):
            return None, index
        for dim, part in enumerate(parts):
            size = self._shape[dim]
            if isinstance(part, bool) or not isinstance(part, (int, slice)):
                return None, index
            if isinstance(part, int):
                at = part + size if part < 0 else part
                if not 0 <= at < size:
                    return None, index  # the framework raises its IndexError
                return (dim, at, 1), parts[:dim] + (0,) + parts[dim + 1:]
            start, stop, step = part.indices(size)
            if step <= 0 or len(range(start, stop, step)) == 0:
                return None, index
            if start == 0 and step == 1 and stop == size:
                continue  # the whole dimension
            count = (len(range(start, stop, step)) - 1) * step + 1
            return (dim, start, count), parts[:dim] + (slice(0, count, step),) + parts[dim + 1:]
        return None, index


class safe_open:
    """A checkpoint opened for reading: a file, a directory, an index, or a list of files, local or
    remote (``http://``, ``https://``, ``s3://bucket/key``, ``hf://org/name[@revision][/file]``: README, "Load from a
    server"), in a build with libcurl.

    ``framework`` is ``"pt"`` (torch tensors) or ``"np"`` (numpy arrays, host only); ``device``
    is ``"cpu"``, ``"cuda"``, ``"cuda:N"``, an index or a ``torch.device``. Headers are read and
    validated here, no tensor byte. Options: ``backend`` (``"auto"``, ``"uring"``, ``"pread"``,
    ``"memory"``, ``"gds"``, ``"http"``), ``direct`` (``"auto"``, ``"on"``, ``"off"``: O_DIRECT reads),
    ``staging_bytes`` and ``slot_bytes`` (the loader's staging memory and largest read; a remote
    checkpoint's default staging holds two slots for each of its 16 connections),
    ``progress`` (a bar on stderr), and ``verify``: ``True`` checks every tensor against the
    XXH3-64 digests ``instanttensor seal`` stored in the checkpoint, a path against a manifest
    (what ``instanttensor hash`` printed); a tensor whose bytes differ raises ``IntegrityError``
    and is never returned (``get_slice`` then reads the whole tensor, to verify it).
    ``verify_files`` names a manifest of whole files' SHA-256 (what ``sha256sum`` printed, or the
    Hub's LFS object ids, matched by file name): a load of every tensor (``tensors()``,
    ``load_file``, ``load_into``) then reads each file whole, header included, and raises
    ``IntegrityError`` naming the file before returning its last tensor if its SHA-256 differs (its
    other tensors were returned by then: discard the load); a load of fewer tensors is refused.
    Group loads cannot verify. An encrypted checkpoint (``instanttensor encrypt``) needs its key, from
    ``key_file`` (as ``instanttensor keygen`` writes it) or the environment variable named by
    ``key_env``: every chunk is authenticated as it is decrypted, and one that fails raises
    ``IntegrityError``; in a group load each rank decrypts the chunks it reads.

    With ``process_group`` (a torch.distributed group over NCCL, loading to its CUDA device, or
    over gloo, loading to the host), ``tensors()``, ``load_file`` and ``load_into`` load as one
    rank of the group: each rank reads about 1/N of the bytes and the group's collectives bring it
    the rest of what it keeps. Every rank must make the same call with the same selection and
    shares, and iterate to the end. What a rank keeps: every tensor whole (the default), those
    ``keep(name, rank)`` accepts, and of the tensors ``split`` selects its block of a dimension,
    indices ⌊D·r/N⌋ to ⌊D·(r+1)/N⌋ of D: ``split`` maps dimensions to the tensors split along them
    (a predicate on names or a collection of names; the first that selects a tensor decides; one
    without that dimension is kept whole). Tensor parallelism is ``split={0: column_parallel,
    1: row_parallel}``; ``split_rows=x`` is ``split={0: x}``. ``get_tensor`` and ``get_slice`` read on
    this rank alone.
    """

    def __init__(self, paths: Paths, framework: str = "pt", device: Any = "cpu", *, backend: str = "auto",
                 direct: str = "auto", staging_bytes: int | None = None, slot_bytes: int | None = None,
                 progress: bool = False, verify: bool | str | os.PathLike = False,
                 verify_files: str | os.PathLike | None = None,
                 key_file: str | os.PathLike | None = None, key_env: str | None = None, process_group=None,
                 keep: Keep | None = None, split: Split | None = None, split_rows: SplitRows | None = None):
        if framework not in ("pt", "np"):
            raise UsageError(f"instanttensor: framework is 'pt' or 'np', not {framework!r}")
        if process_group is None and (keep is not None or split is not None or split_rows is not None):
            raise UsageError("instanttensor: keep, split and split_rows say what each rank of a process_group keeps; "
                             "no process_group was given")
        self._framework = framework
        self._device_index = _cuda_index(device, framework)
        self._device = "cpu" if self._device_index < 0 else f"cuda:{self._device_index}"
        self._group = None if process_group is None else Group(process_group, self._device_index)
        self._keep, self._splits = keep, splits_of(split, split_rows)
        self._checkpoint = _core.Checkpoint(_path_list(paths))
        digests = None
        if verify is True:
            digests = _core.Digests.sealed(self._checkpoint)
        elif verify is not False and verify is not None:
            digests = _core.Digests.read(os.fspath(verify))
        file_digests = None if verify_files is None else _core.FileDigests.read(os.fspath(verify_files))
        if key_file is not None and key_env is not None:
            raise UsageError("instanttensor: key_file and key_env name one key two ways: give one")
        key = None
        if key_file is not None or key_env is not None:
            if not hasattr(_core, "Key"):
                raise UnavailableError("instanttensor: this build cannot decrypt (it has no libsodium and OpenSSL)")
            key = _core.Key.read(os.fspath(key_file)) if key_file is not None else _core.Key.from_environment(key_env)
        self._options = _Options(backend, direct, staging_bytes, slot_bytes, progress, digests, file_digests, key)

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the checkpoint; tensors already returned stay valid."""
        self._checkpoint = None

    def _open(self, names: Iterable[str] = ()):
        """The open checkpoint, which must hold every tensor in `names` (KeyError naming the first that it lacks)."""
        if self._checkpoint is None:
            raise UsageError("instanttensor: the checkpoint is closed")
        for name in names:
            if name not in self._checkpoint:
                raise KeyError(f"{self._checkpoint.files()[0]}: no tensor named {name!r}")
        return self._checkpoint

    def keys(self) -> list[str]:
        """Every tensor's name, sorted."""
        return self._open().names()

    def offset_keys(self) -> list[str]:
        """Every tensor's name in file then offset order: the order ``tensors()`` yields them."""
        return self._open().names_in_load_order()

    def metadata(self) -> dict[str, str] | None:
        """The ``__metadata__`` of the files merged (the first file's value where they disagree), or None."""
        merged = self._open().metadata()
        return merged or None

    def get_tensor(self, name: str):
        """Loads one tensor. For many, ``tensors()`` is faster: one load reads them all in file order."""
        self._open([name])
        for _, tensor in self._load([name], None):
            return tensor
        raise AssertionError("unreachable: a selected tensor was not yielded")

    def get_slice(self, name: str) -> TensorSlice:
        self._open([name])
        return TensorSlice(self, name)

    def tensors(self, names: Iterable[str] | None = None, *,
                filter: Callable[[str], bool] | None = None) -> Iterator[tuple[str, Any]]:
        """Loads the tensors (all, those in ``names``, or those ``filter(name)`` accepts) and yields
        ``(name, tensor)`` in file order as each lands. Only the selected tensors' bytes are read.
        In a group load, it yields the tensors this rank keeps, a split one as its block."""
        checkpoint = self._open()
        if names is None:
            selected = checkpoint.names_in_load_order()
        else:
            selected = list(names)
            self._open(selected)
        if filter is not None:
            selected = [n for n in selected if filter(n)]
        return self._load(selected, self._shares(selected))

    def _shares(self, names: list[str]) -> _Shares | None:
        """What each rank of the group keeps of `names`; None when loading alone."""
        if self._group is None:
            return None
        return _Shares(self._group, self._group.share_table(names, self._keep, self._splits))

    def _plan(self, names: list[str], shares: _Shares | None,
              block: tuple[int, int, int] | None = None) -> dict[str, tuple[tuple[Any, tuple[int, ...]], int]]:
        """{name: ((dtype, shape), bytes)} of the tensors of `names` this rank keeps, in their order:
        each whole, or its block of a dimension (a group's split, or `block`: (dim, first, count))."""
        checkpoint, planned = self._checkpoint, {}
        for index, name in enumerate(names):
            dtype, shape, nbytes, _ = checkpoint.describe(name)
            shape = tuple(shape)
            kept = shares.group.mine(shares.table, index) if shares is not None else None
            if kept == NOTHING:
                continue
            mine = block
            if kept is not None and kept >= SPLIT and kept - SPLIT < len(shape):  # this rank's block, as block_along
                dim = kept - SPLIT
                mine = (dim, *_core.block_of(shape[dim], shares.group.rank, shares.group.size))
            if mine is not None:
                dim, first, count = mine
                nbytes = _core.block_bytes(checkpoint, name, dim, first, count)
                shape = shape[:dim] + (count,) + shape[dim + 1:]
            planned[name] = (_layout(dtype, shape, nbytes, self._framework), nbytes)
        return planned

    def _everything(self) -> dict[str, Any]:
        """{name: tensor} of every tensor this rank keeps, in file order (``load_file``). A host load
        alone without a bar is drained by the module: no Python frame runs per tensor, which shows on
        checkpoints of 100,000 small tensors."""
        if self._device_index >= 0 or self._options.progress or self._group is not None:
            return dict(self.tensors())
        checkpoint, tensors = self._open(), {}
        load = _begin(checkpoint, None, self._options, self._framework, -1, None)
        try:
            untyped = load.drain(tensors)
        finally:
            load.close()
        if untyped:
            planned = self._plan(untyped, None)
            for name in untyped:
                tensors[name] = _typed(tensors[name], planned[name][0], self._framework)
        return tensors

    def _load(self, names: list[str], shares: _Shares | None,
              block: tuple[int, int, int] | None = None) -> Iterator[tuple[str, Any]]:
        # The plan (each tensor's layout and bytes) is made before the load only where it is needed
        # then: for the device's tensors and the progress bar; else on the first tensor handed out
        # untyped (its per-tensor cost shows on checkpoints of 100,000 small tensors).
        planned = self._plan(names, shares, block) if self._device_index >= 0 or self._options.progress else None
        destinations = None
        if self._device_index >= 0:  # land in tensors torch allocated on the device
            import torch
            destinations = {n: torch.empty(shape, dtype=dtype, device=self._device)
                            for n, ((dtype, shape), _) in planned.items()}
        sizes = {n: nbytes for n, (_, nbytes) in planned.items()} if planned is not None else {}
        for name, array, typed in _landing(self._checkpoint, names, self._options, self._framework, self._device_index,
                                           destinations, sizes, shares, block):
            if destinations is not None:
                yield name, destinations.pop(name)
            elif typed:
                yield name, array
            else:
                planned = planned if planned is not None else self._plan(names, shares, block)
                yield name, _typed(array, planned[name][0], self._framework)


@contextlib.contextmanager
def _collector_paused():
    """Pauses Python's cyclic garbage collector: a load makes a few objects per tensor, none in a
    cycle, and over 100,000 tensors the collector would otherwise run hundreds of times across the
    growing dict of them (a seventh of such a load's time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_file(paths: Paths, device: Any = "cpu", *, framework: str = "pt", **options) -> dict[str, Any]:
    """Loads every tensor into a dict, as ``safetensors.torch.load_file`` (options: see ``safe_open``)."""
    with safe_open(paths, framework=framework, device=device, **options) as f, _collector_paused():
        return f._everything()


class IncompatibleKeys(NamedTuple):
    """What ``load_into`` could not match, as ``torch.nn.Module.load_state_dict`` returns it."""
    missing_keys: list[str]
    unexpected_keys: list[str]


def load_into(target, paths: Paths, strict: bool = True, **options) -> IncompatibleKeys:
    """Loads a checkpoint's tensors into existing torch tensors: a module's parameters and buffers
    (its ``state_dict()``) or a dict of tensors, on the host or on CUDA devices.

    Each destination must be contiguous and of the tensor's dtype and shape (raw-byte dtypes: a
    flat uint8 of its size); every mismatch is reported before any byte is read. With ``strict``,
    a key of one side missing on the other is an error too; else they are returned.
    Options: see ``safe_open``. With a ``process_group``, the target holds what this rank keeps
    (a split tensor: its block), on one device: the group's (gloo: the host); the ranks
    check their targets together, so that all fail or none does.
    """
    import torch
    state = target.state_dict() if isinstance(target, torch.nn.Module) else target
    if options.get("process_group") is not None and "device" not in options:
        devices = {t.device for t in state.values()}
        if len(devices) > 1:
            raise UsageError("instanttensor: a group load lands on one device; the target spans "
                             + ", ".join(sorted(map(str, devices))))
        options["device"] = devices.pop() if devices else "cpu"
    with safe_open(paths, framework="pt", **options) as f:
        checkpoint = f._open()
        names = checkpoint.names_in_load_order()
        shares = f._shares(names)
        planned = f._plan(names, shares)
        missing = [k for k in state if k not in planned]
        unexpected = sorted(n for n in planned if n not in state)
        problems = []
        if strict and missing:
            problems.append("missing from the checkpoint: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("in the checkpoint but not in the target: " + ", ".join(unexpected))
        by_device: dict[Any, dict[str, Any]] = {}
        for name, (layout, _) in planned.items():
            if name not in state:
                continue
            destination = state[name]
            if (destination.dtype, tuple(destination.shape)) != layout:
                dtype, shape, nbytes, _ = checkpoint.describe(name)
                held = f"{dtype} {list(shape)}"
                if layout != _layout(dtype, shape, nbytes, "pt"):
                    held += f", of which this rank keeps {list(layout[1])}"
                problems.append(f"{name}: the checkpoint holds {held}, the target "
                                f"{str(destination.dtype).removeprefix('torch.')} {list(destination.shape)}")
            elif not destination.is_contiguous():
                problems.append(f"{name}: the target is not contiguous")
            elif destination.device.type not in ("cpu", "cuda"):
                problems.append(f"{name}: the target is on {destination.device}, not on the host or a CUDA device")
            elif shares is not None and destination.device != torch.device(f._device):
                problems.append(f"{name}: the target is on {destination.device}, the group loads to {f._device}")
            else:
                by_device.setdefault(destination.device, {})[name] = destination
        if shares is not None:
            problems = shares.group.agree(problems)
        if problems:
            raise UsageError(f"{checkpoint.files()[0]}: cannot load into the target: " + "; ".join(problems))
        sizes = {n: nbytes for n, (_, nbytes) in planned.items()}
        if shares is not None:  # one load for the group; a kept tensor the target lacks lands aside
            destinations = by_device.get(torch.device(f._device), {})
            for name, ((dtype, shape), _) in planned.items():
                if name not in destinations:
                    destinations[name] = torch.empty(shape, dtype=dtype, device=f._device)
            for _ in _landing(checkpoint, names, f._options, "pt", f._device_index, destinations, sizes, shares):
                pass
            return IncompatibleKeys(missing, unexpected)
        for device, destinations in by_device.items():
            index = -1 if device.type == "cpu" else (device.index if device.index is not None else torch.cuda.current_device())
            selected = [n for n in names if n in destinations]
            for _ in _landing(checkpoint, selected, f._options, "pt", index, destinations,
                              {n: sizes[n] for n in selected}):
                pass
    return IncompatibleKeys(missing, unexpected)
