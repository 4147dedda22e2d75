"""Settings of the cluster executors (run.ray, run.slurm): how a run's stages are placed, never what they do."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None, description="Ray cluster to join (`auto`: the one this node belongs to); null starts a local one."
    )
    cpus_per_task: int = Field(1, ge=1, description="CPUs Ray reserves per task of the CPU stages.")
    mem_per_cpu_gb: float = Field(2, gt=0, description="Memory Ray reserves per reserved CPU.")
    llm_cpus_per_task: int = Field(1, ge=1, description="CPUs per task of the stage that runs the LLM.")
    llm_gpus_per_task: float = Field(0, ge=0, description="GPUs per task of the stage that runs the LLM (1 on GPUs).")


class SlurmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partition: str = Field(description="Partition of the CPU stages (reading, filtering, dedup, mix, finish).")
    gpu_partition: str | None = Field(None, description="Partition of the LLM stage; null: `partition`.")
    time: str = Field("12:00:00", description="Time limit of each CPU stage's jobs (sbatch --time).")
    llm_time: str = Field("48:00:00", description="Time limit of each LLM-stage job.")
    cpus_per_task: int = Field(1, ge=1, description="CPUs per task of the CPU stages.")
    mem_per_cpu_gb: int = Field(2, ge=1, description="sbatch --mem-per-cpu, in GB.")
    llm_tasks: int | None = Field(
        None, ge=1, description="Tasks of the LLM stage, one GPU job each (null: run.tasks); input is resharded."
    )
    llm_cpus_per_task: int = Field(8, ge=1, description="CPUs per LLM-stage task (tokenising, validators).")
    gpus_per_task: int = Field(1, ge=0, description="GPUs per LLM-stage task; tensor_parallel_size must fit.")
    qos: str | None = Field(None, description="sbatch --qos; null leaves it to the cluster's default.")
    venv_path: str | None = Field(
        None, description="activate script sourced by every job; null: the venv this rephrase runs from."
    )
    env_command: str | None = Field(None, description="Shell line run by every job instead (module load ...).")
    sbatch_args: dict[str, Any] = Field(default_factory=dict, description="More #SBATCH lines, e.g. {account: x}.")
