"""Where a run writes, and the names of its stages: the one place that knows both.

dataset/, ledger/ and stats.json are the output contract; work/ (hand-offs between stages) and logs/ (datatrove's
per-stage logs, completions and stats) are not. Every module that reads or writes a run's folder asks this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CURATE, REPHRASE = "curate", "rephrase"
ROWS, EXACT, COUNT, FINALIZE, LEDGER, FINISH = "rows", "exact", "count", "finalize", "ledger", "finish"
MINHASH = ("minhash/signatures", "minhash/buckets", "minhash/cluster")
SEMANTIC = ("semantic/embed", "semantic/fit", "semantic/assign", "semantic/compare")
POST_CURATE = (ROWS, EXACT, *MINHASH, *SEMANTIC, COUNT, FINALIZE, LEDGER, FINISH)
"""The stages after curate, in run order (those a config switches off are left out of a run)."""


@dataclass(frozen=True)
class Layout:
    out: Path

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def dataset(self) -> Path:
        return self.out / "dataset"

    @property
    def dataset_data(self) -> Path:
        return self.dataset / "data"

    @property
    def ledger(self) -> Path:
        """One parquet shard per ledger task; `datasets.load_dataset("parquet", data_dir=...)` reads them as one."""
        return self.out / "ledger"

    @property
    def stats_file(self) -> Path:
        return self.out / "stats.json"

    @property
    def calibration_file(self) -> Path:
        return self.work / "quality_calibration.json"

    @property
    def fingerprint_file(self) -> Path:
        return self.work / "curate_fingerprint.json"

    @property
    def inputs(self) -> Path:
        return self.work / "inputs"

    @property
    def filtered(self) -> Path:
        """Slurm only: curate's CPU half hands documents to the GPU `rephrase` stage here."""
        return self.work / "filtered"

    @property
    def docs(self) -> Path:
        """Curate's output: one file per task (the run's shards), every surviving document with its metadata."""
        return self.work / "docs"

    @property
    def llm_checkpoints(self) -> Path:
        return self.work / "llm_checkpoints"

    @property
    def llm_progress(self) -> Path:
        """One status file per LLM-stage task (rephrase.llm.progress), summed by the terminal's status line."""
        return self.llm_checkpoints / "progress"

    @property
    def run_log(self) -> Path:
        """Everything a run printed (its engines and stage workers too) unless `rephrase run -v`."""
        return self.logs / "run.log"

    @property
    def curate_ledger(self) -> Path:
        return self.work / "ledger" / "curate"

    @property
    def final_ledger(self) -> Path:
        return self.work / "ledger" / "finalize"

    @property
    def rows(self) -> Path:
        return self.work / "rows"

    @property
    def exact(self) -> Path:
        return self.work / "exact"

    @property
    def minhash(self) -> Path:
        return self.work / "minhash"

    @property
    def semantic(self) -> Path:
        return self.work / "semantic"

    @property
    def counts(self) -> Path:
        """Token histograms per pool from the count stage: what the mix, rebalancing and curriculum plan from."""
        return self.work / "counts"

    @property
    def tallies(self) -> Path:
        """Per-task figures (dataset rows and tokens, ledger fates) that stats.json is merged from."""
        return self.work / "tallies"

    def post_curate(self) -> list[Path]:
        """Everything the stages after curate write: removed before they run again."""
        work = [self.rows, self.exact, self.minhash, self.semantic, self.counts, self.tallies, self.final_ledger]
        return [*work, *(self.logs / stage.split("/")[0] for stage in POST_CURATE), self.dataset_data, self.ledger]
