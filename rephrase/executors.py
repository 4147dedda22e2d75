"""Stages -> datatrove executors: processes on this machine, a Ray cluster, or Slurm job arrays.

The pipeline is the same list of stages whatever runs it; only this module knows executors. Local and Ray stages
run one after the other from this process, each checked before the next starts (datatrove's own `depends` would
wait forever, two minutes at a time, on a dependency whose task crashed). Slurm stages are submitted at once,
chained by `--dependency=afterok`, and this process returns: the last stage, `finish`, writes the ledger, stats
and card on the cluster.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.stats import PipelineStats

from rephrase.config import RunConfig


@dataclass
class Stage:
    """One datatrove executor's worth of work: `tasks` shards of `steps`, logs in `logs/<name>/`."""

    name: str
    steps: list[PipelineStep]
    tasks: int = 1
    gpu: bool = False  # the LLM stage: a GPU partition and GPU requests on Slurm and Ray


class StageFailed(RuntimeError):
    """A stage ended with tasks incomplete; finished tasks are kept and a rerun resumes."""


def merge_task_stats(logging_dir: Path) -> None:
    """stats.json from every task's own stats file, not only those this invocation ran: after a resume, datatrove
    would merge only the tasks it reran and the run's counters would silently miss the rest."""
    files = sorted((logging_dir / "stats").glob("*.json"))
    if not files:
        return
    total = PipelineStats()
    for f in files:
        total += PipelineStats.from_json(json.loads(f.read_text()))
    with (logging_dir / "stats.json").open("w") as out:
        total.save_to_disk(out)


def _local(run: RunConfig, stage: Stage, logs: Path) -> PipelineExecutor:
    from datatrove.executor import LocalPipelineExecutor

    workers = min(run.workers, stage.tasks)
    return LocalPipelineExecutor(stage.steps, tasks=stage.tasks, workers=workers, logging_dir=str(logs))


def _ray(run: RunConfig, stage: Stage, logs: Path) -> PipelineExecutor:
    from datatrove.executor.ray import RayPipelineExecutor

    ray = run.ray
    return RayPipelineExecutor(
        stage.steps,
        tasks=stage.tasks,
        workers=min(run.workers, stage.tasks),
        logging_dir=str(logs),
        cpus_per_task=ray.llm_cpus_per_task if stage.gpu else ray.cpus_per_task,
        gpus_per_task=ray.llm_gpus_per_task if stage.gpu else 0,
        mem_per_cpu_gb=ray.mem_per_cpu_gb,
    )


def _slurm(run: RunConfig, stage: Stage, logs: Path, depends: PipelineExecutor | None) -> PipelineExecutor:
    from datatrove.executor.slurm import SlurmPipelineExecutor

    slurm = run.slurm
    env = {"env_command": slurm.env_command} if slurm.env_command else {"venv_path": slurm.venv_path or _venv()}
    return SlurmPipelineExecutor(
        stage.steps,
        tasks=stage.tasks,
        time=slurm.llm_time if stage.gpu else slurm.time,
        partition=(slurm.gpu_partition or slurm.partition) if stage.gpu else slurm.partition,
        cpus_per_task=slurm.llm_cpus_per_task if stage.gpu else slurm.cpus_per_task,
        mem_per_cpu_gb=slurm.mem_per_cpu_gb,
        gpus_per_task=slurm.gpus_per_task if stage.gpu else 0,
        job_name=f"{run.name}-{stage.name.replace('/', '-')}",
        qos=slurm.qos,
        sbatch_args=slurm.sbatch_args,
        logging_dir=str(logs),
        slurm_logs_folder=str(logs / "slurm"),
        depends=depends,
        **env,
    )


def _venv() -> str | None:
    """The virtual environment this `rephrase` runs from, activated in every job (on a shared filesystem)."""
    return f"{sys.prefix}/bin/activate" if sys.prefix != sys.base_prefix else None


def build(run: RunConfig, stages: list[Stage], logs: Path) -> list[PipelineExecutor]:
    executors: list[PipelineExecutor] = []
    for stage in stages:
        folder = logs / stage.name
        if run.executor == "slurm":
            executors.append(_slurm(run, stage, folder, executors[-1] if executors else None))
        elif run.executor == "ray":
            executors.append(_ray(run, stage, folder))
        else:
            executors.append(_local(run, stage, folder))
    return executors


def submit_stages(run: RunConfig, stages: list[Stage], logs: Path) -> list[str]:
    """Slurm: submit every stage, each after the one before; returns the job ids, one per stage."""
    executors = build(run, stages, logs)
    executors[-1].run()  # launches its dependency chain first
    return [str(e.job_id) for e in executors]


def run_stages(run: RunConfig, stages: list[Stage], logs: Path) -> dict[str, float]:
    """Local and Ray: run the stages in order, each checked before the next; returns each stage's wall time."""
    if run.executor == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(address=run.ray.address, include_dashboard=False, log_to_driver=True)
    timings: dict[str, float] = {}
    for stage, executor in zip(stages, build(run, stages, logs), strict=True):
        resume = f"see {logs / stage.name / 'logs'}. Rerun the same command to resume: finished tasks are kept."
        start = time.perf_counter()
        try:
            executor.run()
        except Exception as e:  # a task's own error, raised through a one-worker local run
            raise StageFailed(f"stage {stage.name} failed: {type(e).__name__}: {e}; {resume}") from e
        if incomplete := executor.get_incomplete_ranks():
            raise StageFailed(f"stage {stage.name}: tasks {incomplete} did not finish; {resume}")
        merge_task_stats(logs / stage.name)
        timings[stage.name] = round(time.perf_counter() - start, 2)
    return timings
