"""Writing a file so that a partial result never sits under its final name."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from chunkstore.errors import InputError, OutputExists, UnsafeOutputName
from chunkstore.objects.ids import object_id


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


PARTIAL_SUFFIX = ".partial"
# A partial's name: `.NAME.KEY.partial`, KEY the first 16 hex digits of the file's manifest
# id, or KEY-XXXXXXXX (random) while another get holds KEY's file.
_PARTIAL_KEY = re.compile(r"[0-9a-f]{16}(-[0-9a-f]{8})?")
# NOFOLLOW: a symbolic link planted at the name is not followed; NONBLOCK: nor does a FIFO
# planted there block the open (it is then refused as no regular file).
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_PROBE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def partial_path(directory: Path, name: str, key: bytes) -> Path:
    """Where a get of the file whose manifest id is `key` into `directory/name` writes."""
    return directory / f".{name}.{key.hex()[:16]}{PARTIAL_SUFFIX}"


def _is_partial_of(entry: str, name: str) -> bool:
    prefix = f".{name}."
    if not (entry.startswith(prefix) and entry.endswith(PARTIAL_SUFFIX)):
        return False
    return _PARTIAL_KEY.fullmatch(entry[len(prefix) : -len(PARTIAL_SUFFIX)]) is not None


def _lock_if_ours(fd: int, path: Path) -> bool:
    """Take `fd`'s flock without waiting; True when taken and `fd` is still the regular file
    at `path`, ours, with one link (not a file a sweeper unlinked meanwhile, nor one planted
    by another user: such a file is never written to, truncated or removed)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    st = os.fstat(fd)
    try:
        at_path = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (
        (st.st_ino, st.st_dev) == (at_path.st_ino, at_path.st_dev)
        and stat.S_ISREG(st.st_mode)
        and st.st_uid == os.geteuid()
        and st.st_nlink == 1
    )


def _claim_partial(directory: Path, name: str, key: bytes | None) -> tuple[int, Path]:
    """An empty partial file for `name` in `directory`, opened for writing and locked (flock)
    until it is closed: the one named by `key`, a killed predecessor's left there emptied and
    reused, unless another live get holds it (then one with a random tail).

    Not mkstemp: its files are 0600, and the output must get the mode any new file gets here
    (0666 less the umask, applied by the kernel), as with cp or a shell redirection."""
    key = key if key is not None else secrets.token_bytes(8)
    shared = partial_path(directory, name, key)
    try:
        fd = os.open(shared, _OPEN_FLAGS, 0o666)
    except OSError:
        pass  # a link, a FIFO, another user's file: the name is not usable, take another
    else:
        if _lock_if_ours(fd, shared):
            os.ftruncate(fd, 0)
            _blocking(fd)
            return fd, shared
        os.close(fd)
    stem = shared.name[: -len(PARTIAL_SUFFIX)]
    for _ in range(100):
        tmp = shared.with_name(f"{stem}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        try:
            fd = os.open(tmp, _OPEN_FLAGS | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(f"cannot write in {directory}: {e.strerror}") from None
        if not _lock_if_ours(fd, tmp):  # another get's sweep took it before we locked it
            os.close(fd)
            continue
        _blocking(fd)
        return fd, tmp
    raise InputError(f"cannot write in {directory}: no free temporary name")


def _blocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def _sweep_partials(directory: Path, name: str, keep: Path) -> None:
    """Remove the partials of `name` in `directory` that no live get holds (left by killed
    gets, of this file or of an earlier version of it), except `keep`."""
    try:
        entries = [e.name for e in os.scandir(directory) if _is_partial_of(e.name, name)]
    except OSError:
        return
    for entry in entries:
        path = directory / entry
        if path == keep:
            continue
        try:
            fd = os.open(path, _PROBE_FLAGS)
        except OSError:
            continue
        try:
            if _lock_if_ours(fd, path):
                path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


class PartialLog:
    """The partial outputs the gets of one home have created and not yet renamed or removed,
    so `verify` can list those a killed get left behind. One small file per partial under
    HOME/partials, holding its absolute path: no lock on the store for a bookkeeping write."""

    def __init__(self, home: Path) -> None:
        self.directory = home / "partials"

    def _entry(self, path: Path) -> Path:
        return self.directory / object_id(os.fsencode(path)).hex()[:32]

    def add(self, path: Path) -> None:
        """Record `path` (made absolute); best effort: a home that cannot be written to
        only loses the report."""
        path = Path(os.path.abspath(path))
        entry = self._entry(path)
        with contextlib.suppress(OSError):
            self.directory.mkdir(mode=0o700, exist_ok=True)
            tmp = entry.with_suffix(f".{secrets.token_hex(4)}.tmp")
            tmp.write_bytes(os.fsencode(path))
            os.replace(tmp, entry)

    def discard(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            self._entry(Path(os.path.abspath(path))).unlink()

    def leftovers(self) -> list[str]:
        """The recorded partials still on disk that no live get holds, sorted; records of
        partials that are gone are dropped."""
        try:
            entries = [e for e in os.scandir(self.directory) if not e.name.endswith(".tmp")]
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            try:
                path = Path(os.fsdecode(Path(entry.path).read_bytes()))
            except OSError:
                continue
            try:
                fd = os.open(path, _PROBE_FLAGS)
            except FileNotFoundError:
                self.discard(path)
                continue
            except OSError:
                found.append(str(path))  # there, but not ours to open: still worth a look
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                found.append(str(path))  # not held: its get is gone
            except BlockingIOError:
                pass  # a get in progress
            finally:
                os.close(fd)
        return sorted(found)


@contextmanager
def atomic_output(
    path: Path,
    *,
    force: bool = False,
    key: bytes | None = None,
    log: PartialLog | None = None,
) -> Iterator[BinaryIO]:
    """A file to write that appears at `path` only if the block completes.

    The data goes to a partial file in the same directory (named from `key`, the manifest id
    of the file written: see _claim_partial) that is renamed over `path` once the block
    completes; on any error the partial file is removed. A partial left by a killed get of
    this output is reused or removed, so at most one is left whatever the number of gets
    killed; `log` records the partial while it exists. An existing path that is not a
    regular file (/dev/null, a FIFO, a terminal) is written to directly, as cp does:
    renaming over it would replace the device with a file."""
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
    fd, tmp = _claim_partial(directory, path.name, key)
    if log is not None:
        log.add(tmp)
    _sweep_partials(directory, path.name, keep=tmp)
    try:
        # The rename happens while the partial's lock is held: a get claiming the same name
        # after it finds the name gone (or another file there) and starts afresh.
        with os.fdopen(fd, "wb") as f:
            try:
                yield f
                f.flush()
                # No fsync, like cp, zstd and rsync: the data is safe in the store (which is
                # synced) and a get can always write the file again; an fsync would make
                # every get wait for the disk (for 1 GiB, longer than the restore takes).
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
    finally:
        if log is not None:
            log.discard(tmp)
