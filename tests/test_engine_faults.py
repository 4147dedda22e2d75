"""A dead or refusing offline engine never leaves anyone waiting, and its processes never outlive the run.

The loop tests run the real VLLMEngine over a stand-in for `vllm.LLM` whose `enqueue_chat` refuses or whose core
dies, since a refusal cannot be provoked on demand; the slow tests kill the real EngineCore of the bundled
SmolLM2-135M, idle and mid-task, and SIGKILL a real `rephrase run` (its main process only, not its group).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pyarrow.parquet as pq
import pytest
from datatrove.data import Document
from stage_steps import wikipedia_step

from rephrase.config import LLMConfig, SamplingConfig
from rephrase.llm.engine import EngineDied, Sampling
from rephrase.llm.factory import build_engine
from rephrase.llm.inflight import InFlight
from rephrase.llm.reaper import reap_leftovers
from rephrase.llm.stage import RephraseStep
from rephrase.llm.vllm_offline import VLLMEngine
from rephrase.models import BUNDLED_REF, resolve_model

REPO = Path(__file__).resolve().parent.parent
CPU_ARGS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}
SAMPLING = Sampling(temperature=0.2, max_tokens=8)
TEXT = (
    "The Danube is the second-longest river in Europe. It flows through Central and Eastern Europe from the Black "
    "Forest into the Black Sea and passes through ten countries, more than any other river in the world."
)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class StandInLLM:
    """What VLLMEngine uses of `vllm.LLM`: refuses conversations saying "refuse"; `die()` ends its core, after
    which `enqueue_chat` raises and a `step` in progress blocks on the output queue, as vLLM 0.32's does."""

    def __init__(self, model: str, seed: int = 0, **engine_args) -> None:
        self.core = SimpleNamespace(name="EngineCore", pid=4242, exitcode=None)
        outputs: queue.Queue = queue.Queue()
        resources = SimpleNamespace(engine_manager=SimpleNamespace(processes=[self.core]), engine_dead=False)
        engine_core = SimpleNamespace(resources=resources, outputs_queue=outputs, shutdown=lambda timeout=None: None)
        self.llm_engine = SimpleNamespace(
            model_config=SimpleNamespace(max_model_len=2048), engine_core=engine_core, step=self.step
        )
        self.added: list[str] = []
        self.block = False
        self.step_s = 0.0

    def die(self) -> None:
        self.core.exitcode = -9

    def enqueue_chat(self, conversations, params, use_tqdm=False) -> list[str]:
        if self.core.exitcode is not None:
            raise RuntimeError("EngineCore encountered an issue")
        if any("refuse" in c[-1]["content"] for c in conversations):
            raise ValueError("this request is refused")
        ids = [f"{len(self.added) + i}-x" for i in range(len(conversations))]
        self.added += [i.split("-")[0] for i in ids]
        return ids

    def step(self) -> list:
        time.sleep(self.step_s)
        if self.block:
            item = self.llm_engine.engine_core.outputs_queue.get()
            raise item
        done, self.added = self.added, []
        text = SimpleNamespace(text="An answer.", finish_reason="stop", token_ids=[1, 2])
        return [SimpleNamespace(request_id=rid, finished=True, outputs=[text]) for rid in done]


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> VLLMEngine:
    import vllm

    monkeypatch.setattr(vllm, "LLM", StandInLLM)
    engine = VLLMEngine(resolve_model(BUNDLED_REF))
    yield engine
    engine.close()


def test_a_refused_request_is_that_conversations_error(stand_in: VLLMEngine) -> None:
    out = stand_in.generate([ask("hello"), ask("refuse this"), ask("bye")], n=1, sampling=SAMPLING)
    assert [g.error is None for g in out] == [True, False, True]
    assert out[1].error.startswith("vllm_refused: ValueError")
    assert out[0].completions[0].text == "An answer."


def test_a_submit_to_an_idle_loop_wakes_the_loop_not_only_the_watch(stand_in: VLLMEngine, monkeypatch) -> None:
    """The watch thread waits on the loop's condition; a submit must wake the loop whatever order they wait in.
    A slow first step puts the watch (waiting long) ahead of the idle loop: `notify()` woke only the watch."""
    monkeypatch.setattr("rephrase.llm.vllm_offline.WATCH_S", 120.0)
    stand_in.llm.step_s = 0.5
    assert stand_in.generate([ask("first")], n=1, sampling=SAMPLING)[0].error is None
    (later,) = stand_in.submit([ask("later")], n=1, sampling=SAMPLING)
    assert later.result(timeout=60).completions[0].text == "An answer."


def test_a_core_dead_while_idle_fails_the_requests_and_the_next_submit(stand_in: VLLMEngine) -> None:
    stand_in.generate([ask("warm up")], n=1, sampling=SAMPLING)
    stand_in.llm.die()
    inflight: InFlight[int] = InFlight()
    futures = stand_in.submit([ask("a"), ask("b")], n=1, sampling=SAMPLING)
    for i, future in enumerate(futures):
        inflight.add(i, future)
    settled = []
    while inflight.unjudged:
        settled += inflight.take(stall_s=30)
    assert all(isinstance(f.exception(), EngineDied) for _, f in settled) and len(settled) == 2
    assert "EngineCore pid 4242 exited with code -9" in str(settled[0][1].exception())
    with pytest.raises(EngineDied, match="vLLM offline engine"):
        stand_in.submit([ask("c")], n=1, sampling=SAMPLING)


def test_a_core_dead_mid_step_fails_the_requests_and_close_returns(stand_in: VLLMEngine) -> None:
    stand_in.llm.block = True
    futures = stand_in.submit([ask("a"), ask("b")], n=1, sampling=SAMPLING)
    stand_in.llm.die()
    assert all(isinstance(f.exception(timeout=30), EngineDied) for f in futures)
    stand_in.close()
    assert not stand_in._loop.is_alive()


def test_the_stage_records_a_refusal_as_llm_error(stand_in: VLLMEngine, tmp_path: Path) -> None:
    step = wikipedia_step(tmp_path / "ckpt", engine=lambda: stand_in)
    meta = {"action": "rephrase", "prompts": ["wikipedia"]}
    docs = [Document(text=t, id=k, metadata={**meta, "record": k}) for k, t in (("a", TEXT), ("b", TEXT + " refuse"))]
    out = {d.id: d for d in step(docs)}
    assert all(f["reason"] != "llm_error" for f in out["a"].metadata["rephrase_failures"])
    failures = out["b"].metadata["rephrase_failures"]
    assert failures[0]["reason"] == "llm_error" and failures[0]["detail"].startswith("vllm_refused")


def test_a_rerun_stops_what_a_dead_owner_left_and_spares_a_live_owners(tmp_path: Path) -> None:
    import json
    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    kept = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        entry = lambda pid: {"pid": pid, "create_time": psutil.Process(pid).create_time(), "name": "x"}  # noqa: E731
        host = socket.gethostname()
        dead_owner = {"owner": {"pid": gone.pid, "create_time": 0.0}, "processes": [entry(orphan.pid)]}
        live_owner = {"owner": entry(os.getpid()), "processes": [entry(kept.pid)]}
        (tmp_path / f"{host}-1.json").write_text(json.dumps(dead_owner))
        (tmp_path / f"{host}-2.json").write_text(json.dumps(live_owner))
        reap_leftovers(tmp_path)
        assert orphan.wait(timeout=30) is not None and kept.poll() is None
        assert [p.name for p in tmp_path.iterdir()] == [f"{host}-2.json"]
    finally:
        for p in (orphan, kept):
            p.kill()
            p.wait()


def engine_processes(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if p.name().startswith("VLLM::")]


@pytest.mark.slow
def test_a_real_core_killed_while_idle_fails_the_next_requests() -> None:
    engine = build_engine("vllm", resolve_model(BUNDLED_REF), engine_args=CPU_ARGS)
    try:
        assert engine.generate([ask("Hi")], n=1, sampling=SAMPLING)[0].error is None
        core = next(p for p in engine_processes(os.getpid()) if p.name() == "VLLM::EngineCore")
        core.kill()
        core.wait(timeout=30)
        try:
            futures = engine.submit([ask("Hello"), ask("Bye")], n=1, sampling=SAMPLING)
        except EngineDied as e:  # the watch saw the death first
            assert "vLLM offline engine" in str(e)
        else:
            for future in futures:
                assert "vLLM offline engine" in str(future.exception(timeout=60))
    finally:
        engine.close()
    assert psutil.wait_procs(engine_processes(os.getpid()), timeout=60)[1] == []


@pytest.mark.slow
def test_a_real_core_killed_mid_task_keeps_finished_work_and_the_rerun_completes(tmp_path: Path) -> None:
    def step() -> RephraseStep:
        llm = LLMConfig(engine="vllm", engine_args=CPU_ARGS)
        sampling = SamplingConfig(n=1, max_tokens=24, resample_rounds=0)
        return wikipedia_step(tmp_path / "ckpt", llm=llm, sampling=sampling, batch_size=2)

    meta = {"action": "rephrase", "prompts": ["wikipedia"]}
    docs = [Document(text=f"{TEXT} ({i})", id=str(i), metadata={**meta, "record": f"r{i}"}) for i in range(40)]
    log = tmp_path / "ckpt" / "00000.jsonl"

    def kill_core_after_first_commit() -> None:
        while not (log.exists() and log.stat().st_size):
            time.sleep(0.05)
        next(p for p in engine_processes(os.getpid()) if p.name() == "VLLM::EngineCore").kill()

    killer = threading.Thread(target=kill_core_after_first_commit, daemon=True)
    killer.start()
    first = step()
    with pytest.raises(EngineDied, match="vLLM offline engine"):
        list(first(docs))
    killer.join()
    finished = len(log.read_text().splitlines())
    assert 0 < finished < len(docs)
    second = step()
    assert len(list(second(docs))) == len(docs)
    assert second.stats["replayed_from_checkpoint"].total == finished


def logged_keys(checkpoints: Path) -> set[str]:
    """Outcome keys in the LLM checkpoint logs (a line the kill tore is not an outcome)."""
    keys = set()
    for log in checkpoints.glob("*.jsonl"):
        for line in log.read_bytes().splitlines():
            try:
                keys.add(json.loads(line)["key"])
            except ValueError:
                continue
    return keys


@pytest.mark.slow
def test_sigkill_of_the_run_process_alone_stops_its_engine_and_the_rerun_keeps_its_work(
    tmp_path: Path, sample_dir: Path
) -> None:
    """The default configuration (configs/demo.yaml: offline vLLM, prefetch thread on) on 12 Wikipedia leads: SIGKILL
    only the main process once the first outcomes are checkpointed; its engine dies with it, and the same command
    run again replays every checkpointed outcome, asks the model only for the rest and accounts for every record."""
    leads = [json.loads(x) for x in (sample_dir / "wiki.jsonl").read_text().splitlines() if x.strip()]
    inputs = tmp_path / "leads.jsonl"
    inputs.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in leads[:12]))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "rephrase.cli", "run", str(REPO / "configs" / "demo.yaml"), "--output", str(out)]
    args += ["--input", str(inputs), "--set", "rephrase.sampling.max_tokens=64", "--set", "rephrase.batch_size=4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    checkpoints = out / "work" / "llm_checkpoints"
    with (tmp_path / "run.log").open("wb") as log:
        run = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=REPO)
    try:
        while not logged_keys(checkpoints) and run.poll() is None:
            time.sleep(0.2)
        printed = lambda: (out / "logs" / "run.log").read_text()[-3000:]  # noqa: E731 (what the run printed)
        assert run.poll() is None, printed()
        engine = engine_processes(run.pid)
        assert engine, printed()
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        survivors = psutil.wait_procs(engine, timeout=60)[1]
        assert survivors == [], f"engine processes outlived the killed run: {survivors}"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    finished = logged_keys(checkpoints)
    rerun = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=840)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["llm"]["replayed_from_checkpoint"] == len(finished) > 0
    assert finished < logged_keys(checkpoints)  # the rest was generated by the rerun
    ledger = pq.read_table(out / "ledger").to_pylist()
    assert sorted(r["doc_id"] for r in ledger) == sorted(r["id"] for r in leads[:12])
    assert all(r["fate"] in {"kept", "rephrased"} or r["reason"] for r in ledger)
