"""A flash crowd (issue 14): 50 fresh downloaders at once, all through one holder's DHT node,
every one completes byte-identical (benchmarks/crowd.py at CI size, as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fifty_concurrent_downloaders_all_complete(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "crowd.py"), "--downloaders", "50",
         "--size", "1MiB", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=380,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = json.loads((tmp_path / "crowd.json").read_text())
    assert result["downloaders"] == result["completed"] == 50, result
    assert result["errors"] == [], result  # none gave up on a holder it could not find
    assert result["dht_latency"]["pings"] > 0  # the holders' DHT was watched meanwhile
