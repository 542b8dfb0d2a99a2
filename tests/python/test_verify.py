"""verify=: loads checked against a manifest or the checkpoint's seals; a sealed file stays one the
reference reads, with the same tensors; a changed byte raises IntegrityError naming the tensor,
and the tensor is never returned. verify_files=: whole files checked against sha256sum's manifest.
"""
import hashlib
import json
import struct

import pytest
import safetensors
import safetensors.torch
import torch

import instanttensor as it
from command import flip_byte, run

@pytest.fixture
def model(tmp_path):
    """A reference-written file of tensors of several dtypes and sizes, with metadata."""
    generator = torch.Generator().manual_seed(3)
    tensors = {
        "big": torch.randn(700, 1000, generator=generator).to(torch.bfloat16),  # larger than a slot of 1 MiB
        "small": torch.randint(0, 100, (17,), generator=generator, dtype=torch.int64),
        "empty": torch.empty(0, 4),
        "weird\nname": torch.randn(3, 3, generator=generator),
    }
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tensors


def test_seal_keeps_a_file_the_reference_reads_the_same(model):
    path, tensors = model
    run("seal", path)
    with safetensors.safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == "pt"
        assert "instanttensor.xxh3" in f.metadata()
        assert sorted(f.keys()) == sorted(tensors)
    loaded = safetensors.torch.load_file(str(path))
    for name, expected in tensors.items():
        assert torch.equal(loaded[name].view(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), name
    ours = it.load_file(path, verify=True, slot_bytes=1 << 20)
    for name, expected in tensors.items():
        assert torch.equal(ours[name].view(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), name


def test_manifest_and_seal_verify_every_way_of_loading(model, tmp_path):
    path, tensors = model
    manifest = tmp_path / "model.xxh3"
    manifest.write_text(run("hash", path))
    run("seal", path)
    for verify in (True, str(manifest), manifest):
        with it.safe_open(path, verify=verify) as f:
            assert f.get_tensor("small").tolist() == tensors["small"].tolist()
            assert torch.equal(f.get_slice("big")[10:20], tensors["big"][10:20])
            assert dict(f.tensors()).keys() == tensors.keys()
        target = {name: torch.empty_like(t) for name, t in tensors.items()}
        assert it.load_into(target, path, verify=verify) == ([], [])
        assert torch.equal(target["big"], tensors["big"])


def test_a_changed_byte_is_an_integrity_error_and_never_returned(model, tmp_path):
    path, tensors = model
    run("seal", path)
    header = json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    begin, _ = header["big"]["data_offsets"]
    flip_byte(path, begin + 123457)
    with pytest.raises(it.IntegrityError) as raised:
        it.load_file(path, verify=True)
    message = str(raised.value)
    assert str(path) in message and "'big'" in message and "its seal expects" in message
    assert isinstance(raised.value, ValueError)
    with it.safe_open(path, verify=True) as f:
        got = []
        with pytest.raises(it.IntegrityError):
            for name, _ in f.tensors():
                got.append(name)
        assert "big" not in got
        assert f.get_tensor("small").tolist() == tensors["small"].tolist()  # the others still load
        with pytest.raises(it.IntegrityError):
            f.get_slice("big")[:1]  # a slice of a verified load reads, and checks, the whole tensor
    assert it.load_file(path)["small"].tolist() == tensors["small"].tolist()  # unverified, it loads


def test_what_cannot_verify_says_so(model, tmp_path):
    path, _ = model
    with pytest.raises(it.FormatError, match="has no seal"):
        it.safe_open(path, verify=True)
    (tmp_path / "bad.xxh3").write_text("zz  big\n")
    with pytest.raises(it.FormatError, match="line 1"):
        it.safe_open(path, verify=tmp_path / "bad.xxh3")
    (tmp_path / "partial.xxh3").write_text("0123456789abcdef  big\n")
    with pytest.raises(it.IntegrityError, match="no digest for tensor 'small'"):
        it.load_file(path, verify=tmp_path / "partial.xxh3")
    with pytest.raises(it.IoError):
        it.safe_open(path, verify=tmp_path / "absent.xxh3")


def test_verify_files_checks_each_file_whole_against_sha256sum(model, tmp_path):
    path, tensors = model
    manifest = tmp_path / "model.sha256"
    # sha256sum's layout, the file named where it was written: files are matched by name.
    manifest.write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  /elsewhere/{path.name}\n")
    ours = it.load_file(path, verify_files=manifest, slot_bytes=1 << 20)
    for name, expected in tensors.items():
        assert torch.equal(ours[name].view(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), name
    target = {name: torch.empty_like(t) for name, t in tensors.items()}
    assert it.load_into(target, path, verify_files=str(manifest)) == ([], [])
    with it.safe_open(path, verify_files=manifest) as f:
        with pytest.raises(it.UsageError, match="is not read whole"):
            f.get_tensor("small")  # one tensor is not the whole file

    run("seal", path)  # a new header: the file's SHA-256 changes
    with pytest.raises(it.IntegrityError) as raised:
        it.load_file(path, verify_files=manifest)
    message = str(raised.value)
    assert message.startswith(f"{path}: its bytes hash to ") and "(SHA-256)" in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message
    (tmp_path / "bad.sha256").write_text("0123  model.safetensors\n")
    with pytest.raises(it.FormatError, match="line 1"):
        it.safe_open(path, verify_files=tmp_path / "bad.sha256")
