"""How the node serving a home tells other processes where it is, and proves it still runs.

Two files in the home:
  node.lock  held with an exclusive flock by the serving node for as long as it runs: the
             kernel drops the lock when the process ends, however it ends, so a node is
             running exactly when the lock is held (a pid written down may be reused)
  node.json  where its ports and local API are (mode 0600: the API URL carries the token);
             believed only while node.lock is held

Light on purpose (no network imports): `chunkstore add` reads it to put the node's address
in a share link, and `get` to decide whether it can go through the node.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from chunkstore.errors import InputError

NODE_FILE = "node.json"
LOCK_FILE = "node.lock"
# The user name in the API URL; the password is the token (see `api_url`).
API_USER = "chunkstore"
# A reader tests the lock by taking it shared for an instant (`running_node`); a node that
# starts at that instant retries this long before concluding another node holds it.
LOCK_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class NodeInfo:
    """What `node.json` says about a running node."""

    pid: int
    host: str
    dht_port: int
    transfer_port: int
    # `http://chunkstore:TOKEN@127.0.0.1:PORT`: the token rides in the URL's userinfo, which
    # HTTP clients (aiohttp, curl) send as an `Authorization: Basic` header, never in the
    # request line. Anyone who can read node.json may use the API: only the home's owner.
    api_url: str
    # The IP peers reach this node at: `host` unless it is a wildcard, else the address a peer
    # observed ("" until one did). Rewritten in node.json when it is learnt.
    advertised_host: str = ""

    def dht_address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.dht_port}"


def new_api_token() -> str:
    """A fresh random token for a node's local API (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def api_url(port: int, token: str) -> str:
    """The local API's URL as node.json gives it (with the token as its password)."""
    return f"http://{API_USER}:{token}@127.0.0.1:{port}"


def api_request(url: str, path: str) -> tuple[str, dict[str, str]]:
    """For a client that does not read credentials from URLs (urllib): the plain URL of
    `path` under the API URL `url`, and the headers that authenticate it."""
    parts = urlsplit(url)
    plain = f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}{path}"
    secret = f"{parts.username or ''}:{parts.password or ''}".encode()
    return plain, {"Authorization": "Basic " + base64.b64encode(secret).decode()}


def api_get_json(url: str, path: str, timeout: float = 15.0) -> object:
    """GET `path` from the local API at `url` (node.json's `api_url`), parsed as JSON.

    Raises urllib's errors (urllib.error.HTTPError for a refusal)."""
    import urllib.request

    plain, headers = api_request(url, path)
    with urllib.request.urlopen(
        urllib.request.Request(plain, headers=headers), timeout=timeout
    ) as r:
        return json.loads(r.read())


def node_lock_held(home: Path) -> bool:
    """True when some process (this one included) holds the home's node lock.

    Tested by taking the lock shared for an instant: this never disturbs a holder (its
    exclusive lock makes ours fail); a node starting in that instant retries (`NodeLock`)."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: no node ever served this home (or it cannot be read)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock if we got it
    return False


class NodeLock:
    """The exclusive lock a serving node holds on the home's node.lock for its lifetime.

    flock locks belong to an open file description: a second `NodeLock` on the same home
    fails even in the same process, and the kernel drops the lock when the process dies."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    async def take(cls, home: Path) -> NodeLock | None:
        """The lock, or None when another node holds it; InputError when the lock file
        cannot be opened."""
        try:
            fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise InputError(f"cannot open {home / LOCK_FILE}: {e.strerror}") from None
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(fd)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    return None
                await asyncio.sleep(0.01)
            except BaseException:
                os.close(fd)
                raise

    def release(self) -> None:
        """Let go of the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def read_node_file(home: Path) -> NodeInfo | None:
    """What the home's node.json says, whether or not its node still runs."""
    try:
        return NodeInfo(**json.loads((home / NODE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running_node(home: Path) -> NodeInfo | None:
    """The node serving `home`, if one runs: node.json counts only while its node holds the
    home's lock (a node.json left by a killed node is ignored, whatever its pid became)."""
    info = read_node_file(home)
    # Read the file before testing the lock: a node writes it after taking the lock and
    # removes it before letting go, so a file read while the lock is held is its node's.
    return info if info is not None and node_lock_held(home) else None


def write_node_file(home: Path, info: NodeInfo) -> None:
    """Write `info` as the home's node.json, atomically (readers never see half a file) and
    readable by the home's owner only (it carries the API token). Only the lock holder
    writes it."""
    tmp = home / (NODE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:
        os.fchmod(fd, 0o600)  # a tmp file left by a crash keeps its old mode otherwise
        f.write(json.dumps(asdict(info)))
    os.replace(tmp, home / NODE_FILE)


def remove_node_file(home: Path) -> None:
    """Remove node.json (a stale one before writing ours, ours when stopping)."""
    (home / NODE_FILE).unlink(missing_ok=True)
