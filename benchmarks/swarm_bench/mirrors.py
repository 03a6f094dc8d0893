"""The reference side: HTTP mirrors of the sample file, one nginx process per mirror, for
aria2c to fetch from."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from benchmarks.swarm_bench.errors import BenchError
from benchmarks.swarm_bench.measure import child_pids
from benchmarks.swarm_bench.netns import http_body, netns_prefix

MIRROR_PORT = 8080  # netns mode: every mirror has an address of its own

_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60;
    default_type application/octet-stream;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    server {{
        listen {host}:{port};
        root {root};
        {limit}
    }}
}}
"""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class NginxMirrors:
    """HTTP mirrors of one directory: one nginx master (+1 worker) per mirror, each capped at
    `rate` bytes/s per connection (`limit_rate`, exact bytes) or uncapped. `urls[i]` is
    mirror i's URL of `file_name`."""

    def __init__(
        self,
        work: Path,
        root: Path,
        file_name: str,
        places: list[tuple[str | None, str]],
        rate: float | None,
        check_from: str | None,
    ) -> None:
        self.work = work
        self.root = root
        self.file_name = file_name
        self.places = places  # (namespace, host) of each mirror
        self.rate = rate
        self.check_from = check_from  # the namespace aria2c runs in
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def __enter__(self) -> NginxMirrors:
        try:
            for i, (ns, host) in enumerate(self.places):
                self._start(i, ns, host)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, i: int, ns: str | None, host: str) -> None:
        d = self.work / f"mirror{i}"
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        port = MIRROR_PORT if ns else _free_port(host)
        limit = f"limit_rate {int(self.rate)};" if self.rate else ""
        user = "user root;" if os.geteuid() == 0 else ""
        (d / "nginx.conf").write_text(
            _NGINX_CONF.format(dir=d, user=user, host=host, port=port, root=self.root, limit=limit)
        )
        with open(d / "stderr.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    *netns_prefix(ns),
                    "nginx",
                    "-p",
                    str(d),
                    "-c",
                    str(d / "nginx.conf"),
                    "-e",
                    str(d / "error.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.procs.append(proc)
        url = f"http://{host}:{port}/{self.file_name}"
        deadline = time.monotonic() + 10
        while http_body(self.check_from, url, "HEAD") is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (
                    (d / "error.log").read_text(errors="replace")
                    if (d / "error.log").exists()
                    else ""
                )[-1500:]
                raise BenchError(f"nginx mirror {i} did not start: {tail.strip()}")
            time.sleep(0.05)
        self.urls.append(url)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()  # nginx: fast shutdown of the master and its worker
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                workers = child_pids(proc.pid)
                proc.kill()
                proc.wait()
                for pid in workers:  # a killed master leaves its worker behind
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        self.procs.clear()
