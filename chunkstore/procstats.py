"""Peak memory of a child process, sampled from /proc (Linux), for the benchmarks."""

from __future__ import annotations

import threading


class RssSampler(threading.Thread):
    """Polls /proc/PID/status for the child's VmHWM and its anonymous / file-backed split.

    The split tells whether memory is the process's own buffers or pages of a mapped file
    (which the kernel can drop at will). VmHWM belongs to the exec'd program's own address
    space, so it is a clean (if up to one interval late) peak when ru_maxrss is not usable."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.path = f"/proc/{pid}/status"
        self.interval = interval
        self.hwm = self.anon = self.file = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                with open(self.path) as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                return
            self.hwm = max(self.hwm, int(fields.get("VmHWM", "0 kB").split()[0]))
            self.anon = max(self.anon, int(fields.get("RssAnon", "0 kB").split()[0]))
            self.file = max(self.file, int(fields.get("RssFile", "0 kB").split()[0]))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
