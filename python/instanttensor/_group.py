"""Group loads over a torch.distributed process group.

Each rank of the group reads about 1/N of the checkpoint; the ranks exchange the rest through the
group's own collectives, so the bytes move through torch's communicator (NCCL's for a group on
CUDA devices, gloo's on the host). The C++ loader plans the windows and calls a ``Group`` for each
exchange (python/src/core.cpp, ProcessGroupTransport); this module never loads an NCCL of its own.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Union

from .errors import UsageError

Keep = Callable[[str, int], bool]                        # keep(name, rank): rank keeps the tensor whole
SplitRows = Union[Callable[[str], bool], Collection[str]]  # the tensors split by rows across the ranks
Split = Mapping[int, SplitRows]  # {dimension: the tensors split along it}; the first that selects a tensor decides

NOTHING, WHOLE, SPLIT = 0, 1, 2  # what a rank keeps of a tensor (core.cpp's Kept); SPLIT + d: its block of dimension d
MAX_SPLIT_DIM = 63


class _Waiter:
    """Waits for a gloo group's collectives, in ticket order, on a thread of its own: gloo's
    point-to-point works complete only inside ``wait()`` (their ``is_completed()`` stays False
    until then), and ``wait()`` would hold the loader's thread."""

    def __init__(self):
        self.completed = -1  # the last ticket whose collectives all ended
        self.error: BaseException | None = None  # the first they raised
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="instanttensor-group", daemon=True)
        self._thread.start()

    def put(self, ticket: int, works: list) -> None:
        self._queue.put((ticket, works))

    def drain(self) -> None:
        """Returns once every collective put so far ended (the thread then stops)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            ticket, works = item
            for w in works:
                try:
                    w.wait()
                except BaseException as e:  # noqa: BLE001 - handed to the loader's thread by done()
                    self.error = self.error or e
            self.completed = ticket


class Group:
    """One rank's side of a group load: the collectives of each operation (a window's exchange, a
    gather of the loader's status rounds), by ticket."""

    def __init__(self, process_group, device_index: int):
        import torch
        import torch.distributed as dist
        self._dist, self.group = dist, process_group
        self.rank = dist.get_rank(process_group)
        if self.rank < 0:
            raise UsageError("instanttensor: this process is not a member of the process group it loads with")
        self.size = dist.get_world_size(process_group)
        self.backend = str(dist.get_backend(process_group))
        if self.backend == "nccl" and device_index < 0:
            raise UsageError("instanttensor: an NCCL process group exchanges device memory: load to its CUDA device, "
                             "not to 'cpu'")
        if self.backend == "gloo" and device_index >= 0:
            raise UsageError("instanttensor: a gloo process group exchanges host memory: load to 'cpu'")
        if self.backend not in ("nccl", "gloo"):
            raise UsageError(f"instanttensor: group loads run over an 'nccl' or 'gloo' process group, not {self.backend!r}")
        self._device = torch.device("cpu") if device_index < 0 else torch.device("cuda", device_index)
        self._global = [dist.get_global_rank(process_group, r) for r in range(self.size)]
        self._pending: dict[int, list] = {}  # NCCL: ticket → the collectives of that operation
        self._gathered: dict[int, tuple] = {}  # gather ticket → (every rank's value, this rank's)
        self._waiter: _Waiter | None = None   # gloo: waits for them instead (one per load)
        self._next = 0

    def _on_device(self):
        import torch
        return torch.cuda.device(self._device) if self._device.type == "cuda" else contextlib.nullcontext()

    # ---- called by the loader (core.cpp), with the GIL ----------------------------------------

    def exchange(self, window, mode: str, segment: int, transfers: list[tuple[int, int, int, int, int, int]]) -> int:
        """Starts one window's exchange over ``window`` (a uint8 tensor over the window buffer and
        its pack area). ``transfers`` are (from, to, offset, length, group, source): the sender
        sends from ``source``, the receiver receives at ``offset``; sends go in one batch per group,
        which both sides of each send agree on (NCCL aggregates a bounded number of calls in one)."""
        dist, works = self._dist, []
        with self._on_device():
            if mode == "all_gather":  # in place: rank r's segment already sits at r·segment
                mine = window[segment * self.rank: segment * (self.rank + 1)]
                works.append(dist.all_gather_into_tensor(window[: segment * self.size], mine, group=self.group,
                                                         async_op=True))
            elif mode == "broadcasts":
                for source, _, offset, length, _, _ in transfers:
                    works.append(dist.broadcast(window[offset: offset + length], src=self._global[source],
                                                group=self.group, async_op=True))
            elif mode == "sends":
                batches: dict[int, list] = {}
                for source, target, offset, length, batch, at in transfers:
                    ops = batches.setdefault(batch, [])
                    if source == self.rank:
                        ops.append(dist.P2POp(dist.isend, window[at: at + length], self._global[target], self.group))
                    if target == self.rank:
                        ops.append(dist.P2POp(dist.irecv, window[offset: offset + length], self._global[source], self.group))
                for batch in sorted(batches):
                    works.extend(dist.batch_isend_irecv(batches[batch]))
        return self._start(works)

    def gather(self, value: int) -> int:
        """Starts an all-gather of every rank's unsigned 64-bit ``value``; ``gathered`` reads it."""
        import torch
        signed = value - (1 << 64) if value >= 1 << 63 else value
        with self._on_device():
            mine = torch.tensor([signed], dtype=torch.int64, device=self._device)
            every = torch.empty(self.size, dtype=torch.int64, device=self._device)
            work = self._dist.all_gather_into_tensor(every, mine, group=self.group, async_op=True)
        ticket = self._start([work])
        self._gathered[ticket] = (every, mine)  # both stay alive until the collective ended
        return ticket

    def _start(self, works: list) -> int:
        ticket, self._next = self._next, self._next + 1
        if self.backend == "gloo":
            if self._waiter is None:
                self._waiter = _Waiter()
            self._waiter.put(ticket, works)
        else:
            self._pending[ticket] = works
        return ticket

    def done(self, ticket: int) -> bool:
        """Whether operation ``ticket`` and every earlier one completed; raises what they raised."""
        if self._waiter is not None:
            if self._waiter.error is not None:
                raise self._waiter.error
            return self._waiter.completed >= ticket
        for earlier in [t for t in self._pending if t <= ticket]:
            works = self._pending[earlier]
            if not all(w.is_completed() for w in works):
                return False
            del self._pending[earlier]
            for w in works:
                w.wait()  # completed: returns at once, or raises the collective's error
        return True

    def gathered(self, ticket: int) -> list[int]:
        """Every rank's value of gather ``ticket``, by rank, once ``done(ticket)``."""
        every, _ = self._gathered.pop(ticket)
        return [v % (1 << 64) for v in every.tolist()]

    def abort(self) -> None:
        """The load gave up on the group (its deadline passed, or a collective failed): returns once
        nothing in flight touches the window buffers the loader is about to free. An NCCL group is
        aborted where torch can (its communicators are then gone; an NCCL work's ``wait()`` only
        orders a stream, so completion is polled); a gloo group's collectives end by themselves, at
        the latest after the process group's timeout."""
        if self.backend == "nccl":
            abort = getattr(self._dist.distributed_c10d, "_abort_process_group", None)
            if abort is not None:
                with contextlib.suppress(Exception):
                    abort(self.group)
            pending, self._pending = self._pending, {}
            for works in pending.values():
                for w in works:
                    while not w.is_completed():
                        time.sleep(0.001)
        self.finish()
        self._gathered.clear()

    def finish(self) -> None:
        """The load ended: stops the gloo waiter once its collectives ended (a next load starts one)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.drain()

    def agree(self, problems: list[str]) -> list[str]:
        """Every rank's ``problems``, each prefixed with its rank: a check that fails on one rank
        then fails on all, before any of them waits for the others in a load."""
        everyone: list[Any] = [None] * self.size
        with self._on_device():
            self._dist.all_gather_object(everyone, problems, group=self.group)
        return [f"rank {r}: {p}" for r, found in enumerate(everyone) for p in found]

    # ---- what each rank keeps -------------------------------------------------------------------

    def share_table(self, names: list[str], keep: Keep | None, splits: list[tuple[int, Callable[[str], bool]]]) -> bytes:
        """What each rank keeps of each name (NOTHING, WHOLE or SPLIT + d), names by ranks, as
        core.cpp reads it. A tensor one of ``splits`` selects is split (along the dimension of the
        first) whatever ``keep`` says of it."""
        everyone, table = bytes([WHOLE]) * self.size, bytearray()
        for name in names:
            dim = next((d for d, selects in splits if selects(name)), None)
            if dim is not None:
                table += bytes([SPLIT + dim]) * self.size
            elif keep is None:
                table += everyone
            else:
                table += bytes(WHOLE if keep(name, r) else NOTHING for r in range(self.size))
        return bytes(table)

    def mine(self, table: bytes, index: int) -> int:
        """What this rank keeps of names[index] of ``table``."""
        return table[index * self.size + self.rank]


def splits_of(split: Split | None, split_rows: SplitRows | None) -> list[tuple[int, Callable[[str], bool]]]:
    """(dimension, predicate on names) of ``split`` in its order, then of ``split_rows`` (dimension 0)."""
    pairs = list((split or {}).items()) + ([(0, split_rows)] if split_rows is not None else [])
    splits = []
    for dim, names in pairs:
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 <= dim <= MAX_SPLIT_DIM:
            raise UsageError(f"instanttensor: split maps dimensions (0 to {MAX_SPLIT_DIM}) to tensors, not {dim!r}")
        splits.append((dim, _name_predicate(names)))
    return splits


def _name_predicate(names: SplitRows) -> Callable[[str], bool]:
    """A predicate on names from a predicate or a collection of names."""
    if callable(names):
        return names
    if isinstance(names, str):
        raise UsageError("instanttensor: split and split_rows take a predicate or a collection of names, not one str")
    chosen = frozenset(names)
    return chosen.__contains__

