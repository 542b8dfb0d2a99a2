"""What a Python user relies on beyond the bytes: tensors that are theirs, memory that comes back,
threads that keep running, and errors that name the file."""
import ctypes
import errno
import gc
import os
import threading
import time

import pytest
import safetensors.torch
import torch

import instanttensor as it


def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture
def checkpoint(tmp_path):
    generator = torch.Generator().manual_seed(7)
    tensors = {f"layer.{i}.weight": torch.randn(256, 256, generator=generator) for i in range(16)}
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(tensors, path)
    return path, tensors


def test_load_file_leaves_the_garbage_collector_as_it_was(checkpoint):
    """load_file pauses the cyclic collector while it loads (many small tensors), and only then."""
    path, expected = checkpoint
    assert gc.isenabled()
    try:
        assert all(torch.equal(t, expected[n]) for n, t in it.load_file(path).items())
        assert gc.isenabled()
        gc.disable()
        it.load_file(path)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_tensors_outlive_the_loader_and_the_next_tensor(checkpoint):
    path, expected = checkpoint
    kept = []
    with it.safe_open(path) as f:
        for name, tensor in f.tensors():
            kept.append((name, tensor))
    gc.collect()
    allocated = [torch.full((256, 256), 7.0) for _ in range(16)]  # would reuse freed memory
    for name, tensor in kept:
        assert torch.equal(tensor, expected[name]), name
    del allocated


def growth_mib(action, repeats, warmup=20):
    """Resident memory gained over `repeats` calls of `action`, after `warmup` calls."""
    for _ in range(warmup):
        action()
    gc.collect()
    before = resident_mib()
    for _ in range(repeats):
        action()
    gc.collect()
    return resident_mib() - before


@pytest.mark.parametrize("tensors_taken, repeats", [(None, 1000), (1, 500)], ids=["whole loads", "stopped early"])
def test_memory_stays_flat_over_many_opens(checkpoint, tensors_taken, repeats):
    path, _ = checkpoint
    def load():
        with it.safe_open(path) as f:
            for taken, _ in enumerate(f.tensors(), start=1):
                if taken == tensors_taken:
                    break  # what the load still holds is freed by the loader
    assert growth_mib(load, repeats) < 32


def test_another_python_thread_runs_while_bytes_move(tmp_path):
    # One tensor of 64 MiB read 64 KiB at a time: a load that held the GIL while it reads would
    # stop the other thread for the whole tensor, not for a switch interval.
    path = tmp_path / "big.safetensors"
    safetensors.torch.save_file({"w": torch.ones(16 << 20)}, path)
    longest_gap = 0.0
    stop = threading.Event()
    def tick():
        nonlocal longest_gap
        last = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            longest_gap, last = max(longest_gap, now - last), now
    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.monotonic()
    try:
        loaded = it.load_file(path, backend="pread", direct="off", staging_bytes=128 << 10, slot_bytes=64 << 10)
    finally:
        load_seconds = time.monotonic() - started
        stop.set()
        ticker.join()
    assert torch.equal(loaded["w"], torch.ones(16 << 20))
    assert longest_gap < max(0.05, load_seconds / 4), f"the other thread stood still {longest_gap:.3f} s of {load_seconds:.3f}"


def test_every_bad_file_raises_an_error_naming_it(fixtures):
    bad = os.path.join(fixtures, "bad")
    names = sorted(n for n in os.listdir(bad) if n.endswith(".safetensors"))
    assert len(names) > 80
    for name in names:
        path = os.path.join(bad, name)
        with pytest.raises(it.Error) as raised:
            it.load_file(path)
        assert isinstance(raised.value, (it.FormatError, it.IoError)), (name, raised.value)
        assert path in str(raised.value), (name, str(raised.value))


def test_error_kinds_are_the_builtin_ones_too(tmp_path):
    with pytest.raises(FileNotFoundError.__mro__[1]) as raised:  # OSError
        it.load_file(tmp_path / "missing.safetensors")
    assert isinstance(raised.value, it.IoError) and raised.value.errno == 2
    assert str(tmp_path / "missing.safetensors") in str(raised.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00[]")
    with pytest.raises(ValueError):
        it.load_file(garbage)
    with pytest.raises(it.UsageError, match="framework"):
        it.safe_open(garbage, framework="tf")
    with pytest.raises(it.UsageError, match="backend 'fast'"):
        it.load_file(os.path.join(os.path.dirname(__file__), "..", "fixtures", "scalars.safetensors"), backend="fast")


def test_every_backend_gives_the_same_bytes(checkpoint):
    path, expected = checkpoint
    for backend in ("auto", "uring", "pread", "memory"):
        for direct in ("auto", "on", "off"):
            for slot in (1 << 20, 64 << 10):  # 64 KiB: the largest tensors' reads land straight in them
                try:
                    loaded = it.load_file(path, backend=backend, direct=direct, staging_bytes=2 << 20, slot_bytes=slot)
                except it.UnavailableError:
                    continue  # io_uring refused here
                except it.IoError as refused:
                    if direct == "on" and refused.errno == errno.EINVAL:
                        continue  # a filesystem without O_DIRECT
                    raise
                for name, tensor in expected.items():
                    assert torch.equal(loaded[name], tensor), (backend, direct, slot, name)


def test_load_into_checks_before_reading(checkpoint):
    path, expected = checkpoint
    target = {name: torch.zeros_like(t) for name, t in expected.items()}
    target["layer.0.weight"] = torch.zeros(256, 128)
    target["extra"] = torch.zeros(1)
    with pytest.raises(it.UsageError) as raised:
        it.load_into(target, path)
    message = str(raised.value)
    assert "layer.0.weight: the checkpoint holds F32 [256, 256], the target float32 [256, 128]" in message
    assert "missing from the checkpoint: extra" in message
    assert all(not t.any() for t in target.values())  # nothing was written
    del target["layer.0.weight"]
    result = it.load_into(target, path, strict=False)
    assert result.missing_keys == ["extra"] and result.unexpected_keys == ["layer.0.weight"]
    assert torch.equal(target["layer.1.weight"], expected["layer.1.weight"])


def test_progress_bar(checkpoint, capfd):
    path, expected = checkpoint
    it.load_file(path, progress=True)
    err = capfd.readouterr().err
    assert "loading [" in err and "100%" in err
    # load_into a target that lacks a tensor: the bar counts only what it loads.
    target = {n: torch.empty_like(t) for n, t in expected.items()}
    del target["layer.0.weight"]
    it.load_into(target, path, strict=False, progress=True)
    assert "100%" in capfd.readouterr().err


def test_numpy_has_no_device(checkpoint):
    path, _ = checkpoint
    with pytest.raises(it.UsageError, match="host memory only"):
        it.safe_open(path, framework="np", device="cuda:0")


def test_ctrl_c_stops_a_load_and_frees_its_memory(tmp_path):
    import _thread
    path = tmp_path / "many.safetensors"
    safetensors.torch.save_file({f"w{i}": torch.ones(64, 1024) for i in range(2048)}, path)  # 512 MiB
    gc.collect()
    before = resident_mib()
    timer = threading.Timer(0.02, _thread.interrupt_main)
    started = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        it.load_file(path, direct="off")
    stopped = time.monotonic() - started
    timer.join()
    gc.collect()
    # Memory freed to the C heap below a chunk still in use stays resident, the process's to reuse,
    # and whether some chunk is above depends on what ran before: ask glibc to give back what is
    # free, so that what is left is what something still holds.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    assert stopped < 1.0
    assert resident_mib() - before < 64, f"{resident_mib() - before:.0f} MiB left after the interrupted load"
