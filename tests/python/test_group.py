"""Group loads over a torch.distributed process group, each rank a process (gloo, on the host).

The ranks of one world run the scenarios below in turn and check what they received against the
reference reader themselves; a rank that fails raises, and torch.multiprocessing reports it here.
The group's traffic stays on the loopback interface (GLOO_SOCKET_IFNAME=lo; the rendezvous is a
file store, no port).
"""
import os

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
safetensors_torch = pytest.importorskip("safetensors.torch")

import instanttensor as it  # noqa: E402
from command import run  # noqa: E402


def write_checkpoint(directory):
    """Two shards of tensors of every rank and shape that splits matter for, and an index."""
    g = torch.Generator().manual_seed(7)
    shards = [
        {
            "layers.0.q_proj.weight": torch.randn(96, 40, generator=g).to(torch.bfloat16),
            "layers.0.o_proj.weight": torch.randn(40, 96, generator=g),
            "experts": torch.randn(4, 6, 53, generator=g).to(torch.float16),
            "layers.0.norm": torch.randn(40, generator=g),
            "few_rows": torch.randint(0, 255, (2, 5000), generator=g, dtype=torch.uint8),  # fewer rows than ranks
            "scalar": torch.tensor(3.5, dtype=torch.float64),
        },
        {
            "layers.1.q_proj.weight": torch.randn(97, 33, generator=g).to(torch.float16),  # rows not divisible
            "layers.1.o_proj.weight": torch.randn(33, 97, generator=g).to(torch.bfloat16),  # columns not divisible
            "big": torch.randn(700_000, generator=g),  # 2.8 MB: several windows of 1 MiB
            "empty": torch.empty(0, 4),
        },
    ]
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        safetensors_torch.save_file(shard, os.path.join(directory, name))
        weight_map.update({k: name for k in shard})
    import json
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return {k: v for shard in shards for k, v in shard.items()}


def block(tensor, rank, ranks, dim=0):
    """Rank `rank`'s block of dimension `dim` of `tensor`, computed here as the documented rule says."""
    size = tensor.shape[dim]
    return tensor.narrow(dim, size * rank // ranks, size * (rank + 1) // ranks - size * rank // ranks).contiguous()


SPLIT = ("layers.0.q_proj.weight", "layers.1.q_proj.weight", "few_rows", "big", "empty", "scalar")
OPTIONS = {"slot_bytes": 256 << 10, "staging_bytes": 1 << 20}  # many reads and exchanges per tensor


def rank_main(rank, ranks, store, directory, encrypted):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ranks)
    try:
        reference = {}
        for name in sorted(os.listdir(directory)):
            if name.endswith(".safetensors"):
                reference.update(safetensors_torch.load_file(os.path.join(directory, name)))
        group = dist.group.WORLD

        # Every rank keeps every tensor whole (the default): each ends with the whole checkpoint.
        loaded = it.load_file(directory, process_group=group, **OPTIONS)
        assert loaded.keys() == reference.keys()
        for name, expected in reference.items():
            assert torch.equal(loaded[name], expected), (name, loaded[name], expected, rank)

        # Splits by rows (scalars stay whole), and the other tensors kept by one rank each.
        owner = {name: i % ranks for i, name in enumerate(sorted(reference))}
        with it.safe_open(directory, process_group=group, split_rows=SPLIT,
                          keep=lambda name, r: owner[name] == r, **OPTIONS) as f:
            got = dict(f.tensors())
        expected = {n: (t if n == "scalar" else block(t, rank, ranks)) for n, t in reference.items() if n in SPLIT}
        expected.update({n: t for n, t in reference.items() if n not in SPLIT and owner[n] == rank})
        assert got.keys() == expected.keys(), (sorted(got), sorted(expected))
        for name, tensor in expected.items():
            assert got[name].shape == tensor.shape and torch.equal(got[name], tensor), name

        # load_into the blocks of a model sharded by rank, a predicate choosing the split.
        target = {n: torch.empty_like(block(t, rank, ranks)) for n, t in reference.items() if "q_proj" in n}
        target.update({n: torch.empty_like(t) for n, t in reference.items() if "q_proj" not in n})
        result = it.load_into(target, directory, process_group=group, split_rows=lambda n: "q_proj" in n, **OPTIONS)
        assert result == it.IncompatibleKeys([], [])
        for name, tensor in target.items():
            assert torch.equal(tensor, block(reference[name], rank, ranks) if "q_proj" in name else reference[name]), name

        # Tensor parallelism: column-parallel weights by rows, row-parallel ones by columns (strided
        # in the file), a 3-D tensor along its last dimension; the first split that selects decides.
        dims = {"q_proj": 0, "o_proj": 1, "experts": 2}
        dim_of = {n: next((d for part, d in dims.items() if part in n), None) for n in reference}
        got = it.load_file(directory, process_group=group, **OPTIONS,
                           split={0: lambda n: "q_proj" in n, 1: lambda n: "o_proj" in n or n == "layers.0.norm", 2: ["experts"]})
        assert got.keys() == reference.keys()
        for name, tensor in reference.items():
            want = tensor if dim_of[name] is None else block(tensor, rank, ranks, dim_of[name])
            assert got[name].shape == want.shape and torch.equal(got[name], want), name  # the 1-D norm stays whole
        target = {n: torch.empty_like(block(t, rank, ranks, 1)) for n, t in reference.items() if "o_proj" in n}
        assert it.load_into(target, directory, strict=False, process_group=group, split={1: lambda n: "o_proj" in n},
                            **OPTIONS).unexpected_keys
        for name, tensor in target.items():
            assert torch.equal(tensor, block(reference[name], rank, ranks, 1)), name

        # A target that does not fit on one rank fails on every rank, before any waits for another.
        target = {n: torch.empty_like(t) for n, t in reference.items()}
        if rank == ranks - 1:
            target["layers.0.norm"] = torch.empty(41)
        with pytest.raises(it.UsageError, match=f"rank {ranks - 1}: layers.0.norm: the checkpoint holds F32 \\[40\\]"):
            it.load_into(target, directory, process_group=group, **OPTIONS)

        # Ranks that ask for different loads all fail, naming the rule, instead of waiting.
        mine = ["big"] if rank == 0 else ["big", "layers.0.norm"]
        with pytest.raises(it.UsageError, match="planned a different load than rank 0"):
            with it.safe_open(directory, process_group=group, **OPTIONS) as f:
                list(f.tensors(mine))

        # A rank whose consumer stops early strands nobody: here the checkpoint is one window, whose
        # exchange every rank started before yielding, so the others load everything. (Over several
        # windows they would fail naming it: tests/pipeline/process_group_test.cpp.)
        with it.safe_open(directory, process_group=group, **OPTIONS) as f:
            if rank == 1:
                for _ in f.tensors():
                    break
            else:
                loaded = dict(f.tensors())
                assert all(torch.equal(loaded[n], t) for n, t in reference.items())

        # An encrypted copy (instanttensor encrypt, chunks of 64 KiB): each rank authenticates and
        # decrypts the chunks it reads, before the exchange.
        if encrypted is not None:
            encrypted_directory, key = encrypted
            got = it.load_file(encrypted_directory, process_group=group, key_file=key, split_rows=SPLIT, **OPTIONS)
            assert got.keys() == reference.keys()
            for name, tensor in reference.items():
                want = block(tensor, rank, ranks) if name in SPLIT and name != "scalar" else tensor
                assert torch.equal(got[name], want), name

        # A subgroup of the first two ranks loads on its own; the others go on.
        pair = dist.new_group([0, 1])
        if rank < 2:
            with it.safe_open(directory, process_group=pair, split_rows=["big"], **OPTIONS) as f:
                assert torch.equal(dict(f.tensors(["big"]))["big"], block(reference["big"], rank, 2))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("ranks", [2, 3])
def test_group_load_over_gloo(tmp_path, ranks):
    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    write_checkpoint(checkpoint)
    encrypted = None
    if hasattr(it._core, "Key"):  # a build with libsodium and OpenSSL
        key = tmp_path / "key"
        run("keygen", key)
        run("encrypt", "--key-file", key, "--chunk-kib", 64, checkpoint, tmp_path / "encrypted")
        encrypted = (str(tmp_path / "encrypted"), str(key))
    torch.multiprocessing.spawn(rank_main, args=(ranks, str(tmp_path / "store"), str(checkpoint), encrypted), nprocs=ranks)


def test_group_arguments_are_checked(tmp_path):
    path = tmp_path / "one.safetensors"
    safetensors_torch.save_file({"x": torch.zeros(4)}, str(path))
    with pytest.raises(it.UsageError, match="no process_group was given"):
        it.safe_open(path, split_rows=["x"])
    store = tmp_path / "store"
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        with pytest.raises(it.UsageError, match="gloo process group exchanges host memory"):
            it.safe_open(path, device="cuda:0", process_group=dist.group.WORLD)
        with pytest.raises(it.UsageError, match="not one str"):
            it.load_file(path, process_group=dist.group.WORLD, split_rows="x")
        with pytest.raises(it.UsageError, match="maps dimensions"):
            it.load_file(path, process_group=dist.group.WORLD, split={"x": 0})
        with pytest.raises(it.UsageError, match="maps dimensions"):
            it.load_file(path, process_group=dist.group.WORLD, split={64: ["x"]})
        # A group of one: the group path, every byte read here.
        assert torch.equal(it.load_file(path, process_group=dist.group.WORLD, split_rows=["x"])["x"], torch.zeros(4))
    finally:
        dist.destroy_process_group()
