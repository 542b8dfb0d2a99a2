"""Bit-exact against the reference reader (safetensors) on its own files, the project's fixtures
and sharded checkpoints written by transformers."""
import os

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

import instanttensor as it

TORCH_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32,
                torch.int64, torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
                torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz,
                torch.float8_e5m2fnuz, torch.float8_e8m0fnu]
NUMPY_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
                np.float16, np.float32, np.float64, np.complex64]


def random_tensor(dtype, shape, generator):
    raw = torch.randint(0, 256, (int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size(),),
                        dtype=torch.uint8, generator=generator)
    return raw.view(dtype).reshape(shape) if dtype != torch.bool else (raw % 2).view(torch.bool).reshape(shape)


def assert_same(ours, theirs):
    assert ours.keys() == theirs.keys()
    for name, expected in theirs.items():
        got = ours[name]
        assert got.dtype == expected.dtype, name
        assert tuple(got.shape) == tuple(expected.shape), name
        if isinstance(expected, torch.Tensor):
            assert torch.equal(got.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), name
        else:
            assert got.tobytes() == expected.tobytes(), name


def test_every_torch_dtype(tmp_path):
    generator = torch.Generator().manual_seed(1)
    tensors = {f"t.{dtype}".replace("torch.", ""): random_tensor(dtype, (3, 5), generator) for dtype in TORCH_DTYPES}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.empty(0, 7)
    path = tmp_path / "all.safetensors"
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt", "note": "é"})
    assert_same(it.load_file(path), safetensors.torch.load_file(path))
    with it.safe_open(path) as f:
        assert f.metadata() == {"format": "pt", "note": "é"}
        assert f.keys() == sorted(tensors)


def test_every_numpy_dtype(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {}
    for dtype in NUMPY_DTYPES:
        raw = rng.integers(0, 256, 48, dtype=np.uint8)
        arrays[f"a.{np.dtype(dtype).name}"] = (raw % 2 if dtype is np.bool_ else raw).view(dtype).reshape(2, -1)
    path = tmp_path / "np.safetensors"
    safetensors.numpy.save_file(arrays, path)
    assert_same(it.load_file(path, framework="np"), safetensors.numpy.load_file(path))


def test_project_fixtures_match_the_reference(fixtures):
    for name in ("all_dtypes.safetensors", "scalars.safetensors", "empty_tensors.safetensors",
                 "names.safetensors", "metadata.safetensors", "only_empty.safetensors"):
        path = os.path.join(fixtures, name)
        ours = it.load_file(path)
        with safetensors.safe_open(path, framework="pt") as f:
            theirs = {k: f.get_tensor(k) for k in f.keys()}
        assert_same(ours, theirs)


def test_dtypes_numpy_lacks_come_back_as_raw_bytes(fixtures):
    path = os.path.join(fixtures, "all_dtypes.safetensors")
    with it.safe_open(path, framework="np") as f:
        bf16 = f.get_tensor("t.bf16")
        assert bf16.dtype == np.uint8 and bf16.shape == (12,)
        assert f.get_slice("t.bf16").get_dtype() == "BF16" and f.get_slice("t.bf16").get_shape() == [2, 3]
        reference = safetensors.torch.load_file(path)["t.bf16"]
        assert bf16.tobytes() == reference.view(torch.uint8).numpy().tobytes()


def test_f6_comes_back_as_raw_bytes(fixtures):
    path = os.path.join(fixtures, "f6.safetensors")
    with it.safe_open(path) as f:
        f6 = [name for name in f.keys() if f.get_slice(name).get_dtype().startswith("F6")]
        assert f6
        for name in f6:
            tensor = f.get_tensor(name)
            assert tensor.dtype == torch.uint8 and tensor.dim() == 1, name


def test_sharded_checkpoint_by_index_directory_and_list(fixtures):
    sharded = os.path.join(fixtures, "sharded")
    files = sorted(os.path.join(sharded, f) for f in os.listdir(sharded) if f.endswith(".safetensors"))
    expected = {}
    for path in files:
        expected.update(safetensors.torch.load_file(path))
    assert_same(it.load_file(sharded), expected)
    assert_same(it.load_file(os.path.join(sharded, "model.safetensors.index.json")), expected)
    assert_same(it.load_file(files), expected)


def test_slices_and_selection(fixtures):
    path = os.path.join(fixtures, "all_dtypes.safetensors")
    reference = safetensors.torch.load_file(path)
    with it.safe_open(path) as f, safetensors.safe_open(path, framework="pt") as g:
        assert torch.equal(f.get_slice("t.f32.second")[1:3, ::2], g.get_slice("t.f32.second")[1:3, ::2])
        assert torch.equal(f.get_slice("t.i64")[-1], reference["t.i64"][-1])
        assert len(f.get_slice("t.f32.second")) == 4
        picked = dict(f.tensors(filter=lambda n: n.endswith("f16")))
        assert sorted(picked) == ["t.bf16", "t.f16"]
        assert dict(f.tensors(["t.u8"])).keys() == {"t.u8"}
        assert f.offset_keys()[0] == "t.u64"  # file order
    with pytest.raises(KeyError, match="no tensor named 'nope'"):
        with it.safe_open(path) as f:
            f.get_tensor("nope")


def test_slices_read_only_the_block_they_narrow(tmp_path):
    # get_slice reads the block of the first dimension an index narrows (the C++ single-load tests
    # count the bytes such a block reads): every kind of index gives what the reference gives.
    g = torch.Generator().manual_seed(3)
    tensors = {"m": torch.randn(64, 48, generator=g).to(torch.bfloat16), "c": torch.randn(5, 7, 9, generator=g),
               "v": torch.arange(100, dtype=torch.int32)}
    path = str(tmp_path / "slices.safetensors")
    safetensors.torch.save_file(tensors, path)
    indices = {"m": [(slice(8, 16),), (slice(None), slice(10, 20)), (slice(None), slice(3, 40, 5)), (5, slice(2, 9)),
                     (-1,), (slice(None), -3), (slice(60, 70), slice(None, None, 2)), (Ellipsis, 4), (slice(None),), ()],
               "c": [(1, 2), (slice(None), slice(None), slice(4, 5)), (slice(None), 6), (slice(2, 4), slice(1, 3), 8)],
               "v": [slice(10, 20), slice(None, None, 7), -1, slice(99, 200)]}
    with it.safe_open(path) as f, safetensors.safe_open(path, framework="pt") as ref:
        for name, cases in indices.items():
            for index in cases:
                got, want = f.get_slice(name)[index], ref.get_slice(name)[index]
                assert got.shape == want.shape and torch.equal(got, want), (name, index)
        # The block each index narrows, and the index into it.
        assert f.get_slice("m")._block((slice(8, 16),)) == ((0, 8, 8), (slice(0, 8, 1),))
        assert f.get_slice("m")._block((slice(None), slice(3, 40, 5))) == ((1, 3, 36), (slice(None), slice(0, 36, 5)))
        assert f.get_slice("c")._block((slice(None), 6)) == ((1, 6, 1), (slice(None), 0))
        assert f.get_slice("m")._block((Ellipsis, 4)) == (None, (Ellipsis, 4))  # the framework's own indexing
        assert f.get_slice("m")._block((slice(None),)) == (None, (slice(None),))  # nothing narrowed: the whole tensor
    with it.safe_open(path, framework="np") as f:
        assert (f.get_slice("c")[:, 6] == tensors["c"][:, 6].numpy()).all()


def test_sharded_transformers_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_llama(transformers)
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    shards = [p for p in os.listdir(tmp_path) if p.endswith(".safetensors")]
    assert len(shards) > 1, shards
    expected = {}
    for shard in shards:
        expected.update(safetensors.torch.load_file(tmp_path / shard))
    assert_same(it.load_file(tmp_path), expected)


def tiny_llama(transformers, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).eval()


def test_transformers_model_loads_bit_exactly(tmp_path):
    transformers = pytest.importorskip("transformers")
    tiny_llama(transformers, seed=0).save_pretrained(tmp_path, max_shard_size="300KB")
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    fresh = tiny_llama(transformers, seed=1)  # other random weights
    result = it.load_into(fresh, tmp_path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    tokens = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(fresh(tokens).logits, reference(tokens).logits)
