"""The `instanttensor` command the tests drive (build/bin/instanttensor), and file surgery they share."""
import struct
import subprocess
from pathlib import Path

COMMAND = Path(__file__).resolve().parents[2] / "build" / "bin" / "instanttensor"


def run(*args):
    """Runs the command with `args`; its stdout (the test fails, showing stderr, if it fails)."""
    result = subprocess.run([str(COMMAND), *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def flip_byte(path, offset_in_data, mask=0x40):
    """Flips bits `mask` of the byte at `offset_in_data` of the safetensors file's data section."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        f.seek(8 + n + offset_in_data)
        b = f.read(1)
        f.seek(8 + n + offset_in_data)
        f.write(bytes([b[0] ^ mask]))
