"""key_file= / key_env=: an encrypted checkpoint (instanttensor encrypt) loads to the tensors that
were encrypted; the reference still reads its header and tensor table unchanged; a missing key, a
wrong key and a changed byte are refused, and the key never appears in a message."""
import pytest
import safetensors
import safetensors.torch
import torch

import instanttensor as it
from command import flip_byte, run

pytestmark = pytest.mark.skipif(not hasattr(it._core, "Key"), reason="a build without libsodium and OpenSSL cannot decrypt")


@pytest.fixture
def encrypted(tmp_path):
    """A reference-written file of several dtypes and sizes, encrypted; its key file and tensors."""
    generator = torch.Generator().manual_seed(5)
    tensors = {
        "big": torch.randn(700, 1000, generator=generator).to(torch.bfloat16),  # chunks of 64 KiB: many
        "small": torch.randint(0, 100, (17,), generator=generator, dtype=torch.int64),
        "empty": torch.empty(0, 4),
        "matrix": torch.randn(33, 65, generator=generator),
    }
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(tensors, str(plain), metadata={"format": "pt"})
    key = tmp_path / "key"
    run("keygen", key)
    path = tmp_path / "encrypted.safetensors"
    run("encrypt", "--key-file", key, "--chunk-kib", 64, plain, path)
    return path, key, tensors


def test_the_reference_reads_the_header_unchanged(encrypted):
    path, _, tensors = encrypted
    with safetensors.safe_open(str(path), "pt") as f:
        assert sorted(f.keys()) == sorted(tensors)
        assert f.metadata()["format"] == "pt"
        assert f.metadata()["instanttensor.cipher"] in ("aes-256-gcm", "xchacha20-poly1305")
        for name, expected in tensors.items():
            sliced = f.get_slice(name)
            assert sliced.get_shape() == list(expected.shape), name
        # What the reference reads is ciphertext: the same size, other bytes.
        assert not torch.equal(f.get_tensor("big"), tensors["big"])


def test_a_key_file_or_variable_loads_the_tensors_that_were_encrypted(encrypted, monkeypatch):
    path, key, tensors = encrypted
    for options in ({"key_file": key}, {"key_env": "INSTANTTENSOR_TEST_KEY"}):
        monkeypatch.setenv("INSTANTTENSOR_TEST_KEY", key.read_text().strip())
        loaded = it.load_file(path, slot_bytes=1 << 20, **options)
        assert sorted(loaded) == sorted(tensors)
        for name, expected in tensors.items():
            assert torch.equal(loaded[name], expected), name
        with it.safe_open(path, key_file=key) as f:
            assert torch.equal(f.get_slice("matrix")[3:7, 1:4], tensors["matrix"][3:7, 1:4])


def test_missing_and_wrong_keys_and_changed_bytes_are_refused(encrypted, tmp_path):
    path, key, _ = encrypted
    with pytest.raises(it.UsageError, match="is encrypted"):
        it.load_file(path)
    other = tmp_path / "other"
    run("keygen", other)
    with pytest.raises(it.IntegrityError, match="another key"):
        it.load_file(path, key_file=other)
    with pytest.raises(it.UsageError):
        it.load_file(path, key_file=key, key_env="X")
    (tmp_path / "bad").write_text("0" * 63 + "x\n")
    with pytest.raises(it.FormatError, match="does not hold a key") as caught:
        it.load_file(path, key_file=tmp_path / "bad")
    assert "0" * 16 not in str(caught.value)
    flip_byte(path, 5000)
    with pytest.raises(it.IntegrityError, match="fails authentication") as caught:
        it.load_file(path, key_file=key)
    assert key.read_text().strip() not in str(caught.value)
