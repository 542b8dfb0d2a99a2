"""A checkpoint's files and their pages in the page cache, for the scripts that time loads warm
and cold (scripts/compare_loads.py, bench/python_side_by_side.py)."""
import os
from pathlib import Path


def checkpoint_files(path):
    """The .safetensors files of a file, a directory or an index's directory, sorted."""
    p = Path(path)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if q.suffix == ".safetensors")
    if p.suffix == ".json":
        return sorted(q for q in p.parent.iterdir() if q.suffix == ".safetensors")
    return [p]


def drop_pages(files):
    """Drops the files' pages from the page cache: posix_fadvise(DONTNEED), no root needed (a file
    that stays resident, as on tmpfs, stays warm)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fill_pages(files):
    """Reads the files through the page cache (a load under --direct auto would read a cold file
    with O_DIRECT, which leaves it cold)."""
    for f in files:
        with open(f, "rb", buffering=0) as h:
            while h.read(1 << 24):
                pass
