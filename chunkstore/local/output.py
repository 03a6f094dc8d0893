"""Writing a file so that a partial result never sits under its final name."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from chunkstore.errors import InputError, OutputExists, UnsafeOutputName


def safe_output_name(name: str) -> str:
    """A name usable as a file name in the current directory, or InputError.

    Names come from users and from the network: one with a path separator or `..` could
    write outside the directory the user chose."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafeOutputName(name)
    return name


Output = Path | BinaryIO


def as_output(output: str | os.PathLike[str] | BinaryIO) -> Output:
    """A path (from str or PathLike) or, for anything else, a binary stream to write to."""
    if isinstance(output, (str, os.PathLike)):
        return Path(output)
    if not hasattr(output, "write"):
        raise InputError(f"cannot write to {output!r}: give a path or a binary stream")
    return output


def _create_partial(directory: Path, name: str) -> tuple[int, str]:
    """A new, empty `.NAME.XXXXXXXX.partial` in `directory`, opened for writing.

    Not mkstemp: its files are 0600, and the output must get the mode any new file gets here
    (0666 less the umask, applied by the kernel), as with cp or a shell redirection."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.partial")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(f"cannot write in {directory}: {e.strerror}") from None
    raise InputError(f"cannot write in {directory}: no free temporary name")


@contextmanager
def atomic_output(path: Path, *, force: bool = False) -> Iterator[BinaryIO]:
    """A file to write that appears at `path` only if the block completes.

    The data goes to a temporary file in the same directory that is renamed over `path`
    once the block completes; on any error the temporary file is removed. An existing path
    that is not a regular file (/dev/null, a FIFO, a terminal) is written to directly, as
    cp does: renaming over it would replace the device with a file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise InputError(f"cannot use {path} as output: {e.strerror}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise InputError(f"{path} is a directory")
    if mode is not None and not stat.S_ISREG(mode):
        try:
            with open(path, "wb") as device:
                yield device
        except OSError as e:
            raise InputError(f"cannot write to {path}: {e.strerror}") from None
        return
    if mode is not None and not force:
        raise OutputExists(str(path))
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = _create_partial(directory, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        # No fsync, like cp, zstd and rsync: the data is safe in the store (which is synced)
        # and a get can always write the file again; an fsync would make every get wait
        # for the disk (for 1 GiB, longer than the whole restore takes).
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
