"""What the benchmarks in scripts/ share: each measured run goes in a fresh process (imports, model loads and
allocator state of one run never help or hurt the next), whose process tree's summed RSS is sampled every 50 ms."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path


def measure(script: str, run: str, n: int, folder: Path) -> dict:
    """Run `script --child run --docs n --out FILE`; its JSON results plus the peak RSS of its tree (MiB)."""
    import psutil

    out, log = folder / f"{run}.json", folder / f"{run}.log"
    with log.open("wb") as err:  # a file, not a pipe: vLLM's logs would fill a pipe nobody reads until the end
        argv = [sys.executable, script, "--child", run, "--docs", str(n), "--out", str(out)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        tree, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):  # a child ended between listing and reading
                peak = max(peak, sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)]))
            time.sleep(0.05)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"benchmark run {run} exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
    return {**json.loads(out.read_text()), "docs": n, "peak_mib": peak / 2**20}
