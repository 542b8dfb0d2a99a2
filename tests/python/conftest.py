"""pytest setup: GPU tests (marker `gpu`) skip themselves where torch sees no CUDA device; a
sharded checkpoint written by the reference, for the tests of remote loads."""
import json
import os

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fixtures():
    return os.path.abspath(FIXTURES)


def write_sharded_reference(root):
    """Writes a checkpoint of 6 BF16 tensors in 2 shards and an index into `root` with the reference
    writer, readable by others (as a server's workers must read it)."""
    import torch
    from safetensors.torch import save_file
    generator = torch.Generator().manual_seed(7)
    tensors = {f"layer{i}.weight": torch.randn(256, 1024 + i, generator=generator).to(torch.bfloat16) for i in range(6)}
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    weight_map = {}
    for shard, members in shards.items():
        save_file({n: tensors[n] for n in members}, str(root / shard))
        weight_map.update({n: shard for n in members})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for f in root.iterdir():
        f.chmod(0o644)  # the reference writes 0600
    return tensors
