"""The errors instanttensor raises: one class per kind of the C++ library's errors.

Each is an ``instanttensor.Error`` and also the built-in exception code already catches for it:
a malformed checkpoint is a ``ValueError``, a failed read an ``OSError`` with its ``errno``. The
message starts with the input at fault (a file path) or the part that refused.
"""


class Error(Exception):
    """Base of every instanttensor error."""


class FormatError(Error, ValueError):
    """A checkpoint breaks the safetensors format or instanttensor's stricter rules."""


class IntegrityError(Error, ValueError):
    """A tensor's bytes are not those its expected digest names (``verify``): the file was
    corrupted or changed after it was sealed or hashed. The message names the tensor, the file and
    both digests."""


class IoError(Error, OSError):
    """An operating-system call failed; ``errno`` says which way. ``str()`` is the whole message."""

    def __str__(self):
        return self.strerror if self.strerror is not None else super().__str__()


class UsageError(Error, ValueError):
    """An argument that cannot work whatever the files hold."""


class UnavailableError(Error, RuntimeError):
    """A backend cannot run here (no io_uring, no CUDA in this build, no GDS driver) and says why."""


class CudaError(Error, RuntimeError):
    """A CUDA runtime call failed."""


class NcclError(Error, RuntimeError):
    """An NCCL call failed, or a peer of a group load failed."""
