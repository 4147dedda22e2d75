"""The same config through the three executors: processes on this machine, a local Ray cluster, and Slurm.

Ray runs for real (a local cluster started by the run). Slurm is checked twice: the generated sbatch scripts
(partitions, GPU requests, arrays, the dependency chain) through a recording `sbatch` on PATH, and, where
`.ci/slurm-up` has started a real one-node Slurm on this machine, a real run whose outputs must equal the local
run's. The LLM is tests/fake_llm.py through the real `vllm-server` engine, so outputs can be compared exactly.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import missing_service
from fake_llm import FakeLLM, run_updates

from rephrase.config import load_config
from rephrase.run import RunResult, Submitted, run_config

REPO = Path(__file__).resolve().parent.parent
SLURM = {"partition": "cpu", "gpu_partition": "gpu", "gpus_per_task": 0, "llm_cpus_per_task": 1, "llm_tasks": 1}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, wiki_texts: list[str]) -> Path:
    folder = tmp_path_factory.mktemp("executors-in")
    texts = [t for t in wiki_texts[:80] if len(t) > 400][:12]
    for part in range(3):
        lines = [json.dumps({"id": f"p{part}-{i}", "text": t}) for i, t in enumerate(texts[part::3])]
        (folder / f"part{part}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def llm():
    with FakeLLM() as fake:
        yield fake


def config(llm: FakeLLM, inputs: Path, out: Path, **sets: object):
    updates = run_updates(
        llm.url, **{"input.sources": [{"path": str(inputs / "*.jsonl")}], "run.output": str(out), "run.tasks": 3}
    )
    updates.update(sets)
    return load_config(REPO / "configs" / "demo.yaml", [], updates)


def outputs(out: Path) -> tuple[list[dict], list[dict]]:
    key = lambda r: json.dumps(r, sort_keys=True, default=str)  # noqa: E731
    rows = pq.read_table(out / "dataset" / "data").to_pylist()
    return sorted(rows, key=key), sorted(pq.read_table(out / "ledger").to_pylist(), key=key)


@pytest.fixture(scope="module")
def local(llm: FakeLLM, inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    result = run_config(config(llm, inputs, tmp_path_factory.mktemp("local")))
    assert isinstance(result, RunResult) and result.stats["fates"].get("rephrased")
    return result


@pytest.mark.slow
def test_ray_local_cluster_gives_the_local_result(llm: FakeLLM, inputs: Path, tmp_path: Path, local) -> None:
    import ray

    cfg = config(llm, inputs, tmp_path / "ray", **{"run.executor": "ray", "run.workers": 2})
    try:
        result = run_config(cfg)
    finally:
        ray.shutdown()
    assert outputs(result.layout.out) == outputs(local.layout.out)
    assert result.stats["records"] == local.stats["records"] == 12
    executor = json.loads((result.layout.logs / "curate" / "executor.json").read_text())
    assert {"ray_remote_kwargs", "gpus_per_task", "nodes_per_task"} <= set(executor)  # RayPipelineExecutor's own
    assert sorted(p.name for p in (result.layout.logs / "curate" / "completions").iterdir()) == [
        "00000",
        "00001",
        "00002",
    ]


def fake_sbatch(bin_dir: Path, record: Path) -> None:
    """An `sbatch` that keeps each script and its arguments and answers like the real one."""
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f"n=$(( $(ls {record} | wc -l) + 101 ))\n"
        f'{{ echo "ARGS $*"; cat "${{@: -1}}"; }} > {record}/$n.sbatch\n'
        'echo "Submitted batch job $n"\n'
    )
    script.chmod(0o755)
    record.mkdir()


def test_slurm_scripts_put_each_stage_on_its_partition_in_order(
    llm: FakeLLM, inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_sbatch(tmp_path / "bin", tmp_path / "jobs")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    slurm = {**SLURM, "gpus_per_task": 1, "llm_tasks": 2, "sbatch_args": {"account": "lab"}}
    cfg = config(llm, inputs, tmp_path / "out", **{"run.executor": "slurm", "run.slurm": slurm})
    submitted = run_config(cfg)
    assert isinstance(submitted, Submitted) and not (tmp_path / "out" / "dataset" / "data").exists()
    scripts = [p.read_text() for p in sorted((tmp_path / "jobs").iterdir(), key=lambda p: int(p.stem))]
    stages = [s for s in scripts if "launch_pickled_pipeline" in s]  # the others merge each stage's stats
    names = [re.search(r"--job-name=rephrase-demo-(\S+)", s).group(1) for s in stages]
    assert names == ["curate", "rephrase", "rows", "exact", "minhash-signatures", "minhash-buckets",
                     "minhash-cluster", "count", "finalize", "ledger", "finish"]  # fmt: skip
    by_name = dict(zip(names, stages, strict=True))
    for name, script in by_name.items():
        gpu = name == "rephrase"
        assert f"--partition={'gpu' if gpu else 'cpu'}" in script, name
        assert ("--gpus=1" in script) == gpu, name
        assert "#SBATCH --account=lab" in script and f"source {sys.prefix}/bin/activate" in script
        assert f"launch_pickled_pipeline {tmp_path / 'out' / 'logs' / name.replace('minhash-', 'minhash/')}" in script
    assert "--array=0-2" in by_name["curate"] and "--array=0-1" in by_name["rephrase"]
    assert "--array=0-13" in by_name["minhash-buckets"] and "--array=0-0" in by_name["finish"]
    for later in ("rows", "exact", "minhash-signatures", "count", "finalize", "ledger"):  # job arrays like curate's
        assert "--array=0-2" in by_name[later], later
    # each stage waits for the one before: afterok on the previous stage's job id
    job_of = {}
    for path in sorted((tmp_path / "jobs").iterdir(), key=lambda p: int(p.stem)):
        text = path.read_text()
        if "launch_pickled_pipeline" in text:
            job_of[re.search(r"--job-name=rephrase-demo-(\S+)", text).group(1)] = (path.stem, text)
    for before, after in itertools.pairwise(names):
        assert f"--dependency=afterok:{job_of[before][0]}" in job_of[after][1].splitlines()[0], (before, after)


def slurm_ready() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "idle" in out or "mix" in out


@pytest.mark.slow
def test_a_real_slurm_run_gives_the_local_result(llm: FakeLLM, inputs: Path, tmp_path: Path, local) -> None:
    if not slurm_ready():
        missing_service("no Slurm on this machine: .ci/slurm-up starts a one-node cluster (Debian's slurm-wlm)")
    out = tmp_path / "slurm"
    cfg = config(llm, inputs, out, **{"run.executor": "slurm", "run.slurm": {**SLURM, "time": "00:20:00"}})
    submitted = run_config(cfg)
    assert isinstance(submitted, Submitted)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", ",".join(submitted.job_ids)], capture_output=True, text=True)
        if not queued.stdout.strip() and (out / "stats.json").exists():
            break
        time.sleep(3)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((out / "logs").rglob("slurm/*.out")))
    assert (out / "stats.json").exists(), f"the Slurm jobs did not finish:\n{logs}"
    assert outputs(out) == outputs(local.layout.out), logs
    assert json.loads((out / "stats.json").read_text())["fates"] == local.stats["fates"]
