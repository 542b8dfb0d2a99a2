"""Remote checkpoints from Python: the same URLs the command takes, served by nginx on 127.0.0.1
(tests/remote/servers.py); skipped where nginx cannot run or the module was built without libcurl."""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as reference_load_file

import instanttensor as it
from conftest import write_sharded_reference

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "remote"))
from servers import Nginx, Unavailable  # noqa: E402


@pytest.fixture
def served():
    """A sharded checkpoint written by the reference and its URL directory. It lies under build/,
    not in pytest's private temporary directory: run as root, nginx's workers read as nobody."""
    base = Path(__file__).resolve().parents[2] / "build"
    base.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="python-remote-", dir=base))
    work.chmod(0o755)
    root = work / "root"
    root.mkdir()
    write_sharded_reference(root)
    try:
        with Nginx(work, lambda port: f"server {{ listen 127.0.0.1:{port()}; root {root}; }}") as n:
            yield root, f"http://127.0.0.1:{n.ports[0]}/"
    except Unavailable as e:
        pytest.skip(str(e))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_load_file_from_a_url_equals_the_reference(served):
    root, base = served
    expected = {}
    for shard in sorted(root.glob("*.safetensors")):
        expected.update(reference_load_file(str(shard)))
    try:
        loaded = it.load_file(base)  # a directory: its index
    except it.UnavailableError as e:
        pytest.skip(f"built without libcurl: {e}")
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_safe_open_and_errors_name_the_url(served):
    _, base = served
    try:
        with it.safe_open(base + "model.safetensors.index.json", framework="pt") as f:
            assert len(f.keys()) == 6
            assert f.get_tensor("layer0.weight").shape == (256, 1024)
    except it.UnavailableError as e:
        pytest.skip(f"built without libcurl: {e}")
    with pytest.raises(OSError, match=r"missing\.safetensors: HTTP 404"):
        it.load_file(base + "missing.safetensors")
