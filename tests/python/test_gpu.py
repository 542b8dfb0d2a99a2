"""The same on a CUDA device: bytes land in tensors torch allocated, or in the caller's."""
import os

import pytest
import safetensors.torch
import torch

import instanttensor as it

pytestmark = pytest.mark.gpu


def test_load_file_to_the_gpu_is_bit_exact(fixtures):
    for name in ("all_dtypes.safetensors", "scalars.safetensors", "empty_tensors.safetensors"):
        path = os.path.join(fixtures, name)
        expected = safetensors.torch.load_file(path)
        loaded = it.load_file(path, device="cuda:0")
        assert loaded.keys() == expected.keys()
        for key, tensor in expected.items():
            got = loaded[key]
            assert got.device == torch.device("cuda", 0) and got.dtype == tensor.dtype and got.shape == tensor.shape
            assert torch.equal(got.cpu().reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key


def test_tensors_on_the_gpu_outlive_the_loader(fixtures):
    path = os.path.join(fixtures, "sharded")
    with it.safe_open(path, device=0) as f:
        kept = dict(f.tensors())
    filler = [torch.full((1 << 20,), 3, device="cuda:0") for _ in range(8)]
    expected = it.load_file(path)
    for key, tensor in expected.items():
        assert torch.equal(kept[key].cpu(), tensor), key
    del filler


def test_load_into_cuda_parameters():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    source = transformers.LlamaForCausalLM(config)
    target = transformers.LlamaForCausalLM(config).to("cuda:0")
    import tempfile
    with tempfile.TemporaryDirectory() as directory:
        source.save_pretrained(directory)
        result = it.load_into(target, directory)
    assert result == ([], [])
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name].cpu(), tensor), name


def test_process_group_of_one_over_nccl(tmp_path, fixtures):
    """The group path over torch's own NCCL communicator: a world of one on cuda:0, rows split."""
    import torch.distributed as dist
    path = os.path.join(fixtures, "sharded")
    expected = it.load_file(path)
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loaded = it.load_file(path, device="cuda:0", process_group=dist.group.WORLD, split_rows=lambda name: True)
        assert loaded.keys() == expected.keys()
        for key, tensor in expected.items():
            assert loaded[key].device == torch.device("cuda", 0) and torch.equal(loaded[key].cpu(), tensor), key
        with pytest.raises(it.UsageError, match="NCCL process group exchanges device memory"):
            it.safe_open(path, device="cpu", process_group=dist.group.WORLD)
    finally:
        dist.destroy_process_group()
