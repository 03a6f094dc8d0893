"""The programs a run starts besides its own nodes: aria2c and nginx (the reference), `ip`
and `tc` (netns mode), and the chunkstore CLI; finding them, and installing the missing ones
with apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

from benchmarks.swarm_bench.models import BenchConfig

APT_PACKAGES = {"aria2c": "aria2", "nginx": "nginx-light", "ip": "iproute2", "tc": "iproute2"}


def missing_tools(config: BenchConfig) -> list[str]:
    """Programs this configuration needs that are not on PATH (aria2c, nginx, ip, tc)."""
    wanted = (["aria2c", "nginx"] if config.aria2c else []) + (["ip", "tc"] if config.netns else [])
    return [t for t in wanted if shutil.which(t) is None]


def have_aria2c() -> bool:
    """Whether the aria2c comparison can run: aria2c and nginx on PATH."""
    return all(shutil.which(t) for t in ("aria2c", "nginx"))


def install_tools(
    tools: Sequence[str], progress: Callable[[str], None] = lambda line: None
) -> bool:
    """apt-get install the Debian packages of `tools` (root only); True if all are there after."""
    packages = sorted({APT_PACKAGES[t] for t in tools})
    if not packages:
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        progress(f"not root or no apt-get: cannot install {' '.join(packages)}")
        return False
    progress(f"installing {' '.join(packages)} with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *packages],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    return all(shutil.which(t) for t in tools)


def chunkstore_command() -> list[str]:
    """The chunkstore CLI of this interpreter (the same one LocalSwarm starts nodes with)."""
    return [sys.executable, "-m", "chunkstore_cli"]
