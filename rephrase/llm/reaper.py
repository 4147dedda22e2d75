"""The offline engine's processes die with the process that built them, even one killed by SIGKILL.

`vllm.LLM` spawns an EngineCore process, which spawns its worker (and multiprocessing starts a resource tracker).
None of them notices its parent's death: measured on vLLM 0.32 CPU, after `kill -9` of the process that built
the engine, EngineCore (0.8 GB), its worker (3.6 GB, both cores busy) and the tracker lived on under init,
generating. On a GPU node such an orphan keeps its GPU memory and the resumed run cannot start its engine.
PR_SET_PDEATHSIG cannot be set in them (vLLM spawns them) and would fire when the *thread* that spawned them
ends, so two mechanisms instead:

- a watchdog process (`python -m rephrase.llm.reaper`, in its own session so a signal to the run's process group
  does not take it first) that learns the engine's processes by watching its parent's new descendants while the
  engine is built, and stops them when its parent dies (its stdin pipe closes or it is re-parented);
- a record of those processes (pid and start time) in the task's checkpoint folder, so a rerun into the same
  output stops what a predecessor left when the watchdog itself was killed, before it starts its own engine.

A pid is only ever signalled when its start time matches the recorded one: a reused pid is someone else's.
psutil comes with vLLM, the only user of this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

GRACE_S = 10.0
"""Seconds between SIGTERM and SIGKILL; the resource tracker ignores SIGTERM and exits once the engine is gone."""


def stop(processes: list[psutil.Process], grace_s: float = GRACE_S) -> list[psutil.Process]:
    """SIGTERM, then SIGKILL after `grace_s`, each process that is still the one recorded (psutil compares its
    start time before signalling); returns those that could not be stopped (another user's)."""
    alive = [p for p in processes if p.is_running()]
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.kill()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    return alive


def _described(processes: list[psutil.Process]) -> str:
    names = []
    for p in processes:
        try:
            names.append(f"pid {p.pid} ({p.name()})")
        except psutil.Error:
            names.append(f"pid {p.pid} (gone)")
    return ", ".join(names)


def reap_leftovers(folder: Path) -> None:
    """Stop the engine processes recorded in `folder` by an owner on this host that is gone; a live owner's
    (another task of this run) are left alone. Raises, naming them, if any cannot be stopped."""
    host = socket.gethostname()
    for record_file in sorted(folder.glob(f"{host}-*.json")):
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):  # torn by a kill while written: nothing can be trusted in it
            record_file.unlink(missing_ok=True)
            continue
        if _same(record["owner"]) is not None:
            continue
        left = [p for p in map(_same, record["processes"]) if p is not None]
        if left:
            logger.warning("stopping engine processes left by a killed run (%s): %s", record_file, _described(left))
            if survivors := stop(left):
                raise RuntimeError(
                    f"engine processes of a killed run still hold this machine and cannot be stopped: "
                    f"{_described(survivors)} (recorded in {record_file}); kill them, then rerun"
                )
        record_file.unlink(missing_ok=True)


def _same(entry: dict) -> psutil.Process | None:
    """The recorded process if it still exists and is the same one (same start time)."""
    try:
        p = psutil.Process(entry["pid"])
        return p if abs(p.create_time() - entry["create_time"]) < 0.01 else None
    except psutil.Error:
        return None


def _entry(p: psutil.Process) -> dict:
    return {"pid": p.pid, "create_time": p.create_time(), "name": p.name()}


class EngineGuard:
    """Started before the engine is built (processes spawned while it builds are guarded), `built()` once it is,
    `release()` once it is shut down."""

    def __init__(self, record_dir: Path | None = None) -> None:
        self.record_file = None
        if record_dir is not None:
            record_dir.mkdir(parents=True, exist_ok=True)
            reap_leftovers(record_dir)
            self.record_file = record_dir / f"{socket.gethostname()}-{os.getpid()}.json"
        self._before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "rephrase.llm.reaper", str(os.getpid())],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )

    def processes(self) -> list[psutil.Process]:
        """This process's descendants that appeared since the guard started (the engine's), watchdog aside."""
        mine = [p for p in psutil.Process().children(recursive=True) if p.pid not in self._before]
        return [p for p in mine if p.pid != self.watchdog.pid]

    def built(self) -> None:
        """The engine is up: record its processes for a rerun, and tell the watchdog to take no new ones."""
        if self.record_file is not None:
            owner = _entry(psutil.Process())
            record = {"owner": owner, "processes": [_entry(p) for p in self.processes()]}
            tmp = self.record_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(self.record_file)
        self._tell(b"built\n")

    def release(self) -> None:
        """The engine is shut down: stop what is left of it, then the watchdog and the record."""
        if survivors := stop(self.processes()):
            logger.warning("engine processes outlived shutdown and cannot be stopped: %s", _described(survivors))
        self._tell(b"stop\n")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.watchdog.wait(timeout=GRACE_S)
        if self.record_file is not None:
            self.record_file.unlink(missing_ok=True)

    def _tell(self, line: bytes) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.watchdog.stdin.write(line)
            self.watchdog.stdin.flush()
        if line == b"stop\n":
            with contextlib.suppress(BrokenPipeError):
                self.watchdog.stdin.close()


def watch(parent_pid: int) -> None:
    """The watchdog: guard the parent's new descendants until told `built`; when the parent dies without saying
    `stop`, stop them (and whatever they spawned)."""
    parent = psutil.Process(parent_pid)
    before = {p.pid for p in parent.children(recursive=True)}
    guarded: dict[int, psutil.Process] = {}
    building = True
    while True:
        if building:
            with contextlib.suppress(psutil.Error):
                for p in parent.children(recursive=True):
                    if p.pid not in before and p.pid != os.getpid():
                        guarded.setdefault(p.pid, p)
        ready, _, _ = select.select([sys.stdin.buffer], [], [], 1.0)
        line = sys.stdin.buffer.readline() if ready else None
        if line == b"stop\n":
            return
        if line == b"built\n":
            building = False
        elif line == b"" or os.getppid() != parent_pid:  # the pipe closed or init adopted us: the parent is dead
            break
    victims = dict(guarded)
    for p in guarded.values():
        with contextlib.suppress(psutil.Error):
            victims.update((child.pid, child) for child in p.children(recursive=True))
    stop(list(victims.values()))


if __name__ == "__main__":
    watch(int(sys.argv[1]))
