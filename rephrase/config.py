"""Pydantic models for a whole run, loaded from YAML with errors that say where and what to change.

Every key is checked (`extra="forbid"`), so a typo fails at start instead of silently using a default hours into
a GPU job. So is every component a config names (heuristics and their parameters, validators and theirs, quality
classifiers): a rerun clears curate's outputs when the config changed, and it must not do that for a config that
cannot run. Relative paths in a config file are resolved against that file's folder, so a config means the same
thing whatever directory `rephrase` is started from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from filters.classifiers import resolve_classifier_path
from filters.heuristics import check_params
from filters.minhash import MinhashConfig
from filters.perplexity import PerplexityConfig
from filters.semantic import SemanticDedupConfig
from rephrase.executor_config import RayConfig, SlurmConfig
from rephrase.llm.validators import VALIDATORS
from rephrase.rebalance import CurriculumConfig, RebalanceConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunConfig(Strict):
    name: str = Field("rephrase", description="Run name, written into the dataset card and Slurm job names.")
    output: str = Field("out/run", description="Output folder: dataset/, ledger/, stats.json, work/, logs/.")
    tasks: int = Field(1, ge=1, description="datatrove tasks for the filtering + rewriting stage (input sharding).")
    workers: int = Field(1, ge=1, description="Tasks run at once (local and Ray executors).")
    finalize_tasks: int | None = Field(
        None,
        ge=1,
        description="Tasks of every stage after curate (rows, dedup, count, finalize, ledger), each on its share of "
        "curate's output files; null: run.tasks. More tasks than curate tasks leaves some idle.",
    )
    seed: int = Field(0, description="Seeds sampling, mixing and anything random.")
    progress_interval_s: float = Field(
        60.0,
        gt=0,
        description="Without a terminal (a Slurm log, nohup, CI), each LLM task logs a progress line this often: "
        "documents, rewrites accepted, tokens, tok/s, ETA.",
    )
    executor: Literal["local", "ray", "slurm"] = Field(
        "local",
        description="local: processes on this machine. ray: datatrove's Ray executor (a local cluster unless "
        "run.ray.address). slurm: job arrays submitted with sbatch, CPU and GPU stages on their own partitions.",
    )
    ray: RayConfig = Field(default_factory=RayConfig)
    slurm: SlurmConfig | None = Field(None, description="Required with executor: slurm.")

    @model_validator(mode="after")
    def _slurm_needs_its_section(self) -> RunConfig:
        if self.executor == "slurm" and self.slurm is None:
            raise ValueError("executor slurm needs a run.slurm section with at least `partition`")
        return self


class SourceConfig(Strict):
    path: str = Field(description="A file, glob or folder; `bundled:sample/<file>` for the bundled corpus.")
    format: Literal["auto", "jsonl", "parquet", "warc"] = Field("auto", description="auto: from the file suffix.")
    limit: int = Field(-1, description="Records read from this source per task; -1 reads all.")
    text_key: str = Field("text", description="Field holding the document text (JSONL, Parquet).")
    id_key: str = Field("id", description="Field holding the document id; missing ids become file:line.")


class InputConfig(Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    max_doc_bytes: int = Field(
        1_000_000, ge=1, description="Documents larger than this (UTF-8 bytes) are dropped as input/too_large."
    )
    extract_html: bool = Field(True, description="Extract main text from WARC HTML with datatrove's Trafilatura.")
    extract_timeout_s: float = Field(5.0, gt=0, description="Per-page HTML extraction timeout.")


class LanguageConfig(Strict):
    enabled: bool = True
    languages: list[str] | None = Field(["en"], description="ISO 639-1 codes to keep; null keeps every language.")
    threshold: float = Field(0.65, ge=0, le=1, description="Minimum lid.176 probability of a kept language.")


class HeuristicConfig(Strict):
    use: Literal["gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality"]
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="`definition: paper` (default: the paper's words and thresholds) or `datatrove` (datatrove's "
        "filter exactly), and keyword arguments of the datatrove filter, which override either.",
    )

    @field_validator("params")
    @classmethod
    def _accepted(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "use" in info.data:  # an unknown filter is reported on `use` alone
            check_params(info.data["use"], params)
        return params


class ClassifierConfig(Strict):
    name: str = Field(description="Column name of the score, e.g. quality_starter.")
    path: str = Field(description="fastText model file; `bundled:quality_starter` for the shipped one.")
    label: str = Field("__label__hq", description="Label whose probability is the score.")

    @field_validator("path")
    @classmethod
    def _exists(cls, path: str) -> str:
        try:
            resolve_classifier_path(path)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        return path


class QualityConfig(Strict):
    classifiers: list[ClassifierConfig] = Field(default_factory=list)
    scale: Literal["score", "percentile"] = Field(
        "score",
        description="score: the classifiers' probabilities as they are (DCLM, FineWeb-Edu thresholds). percentile: "
        "each score becomes its percentile rank among a calibration sample of this run's input (Nemotron-CC), so "
        "classifiers with different score ranges can be combined and buckets hold equal shares of the input.",
    )
    ensemble: Literal["mean", "max"] = Field(
        "mean", description="How several classifiers' (scaled) scores combine into quality_score (Nemotron-CC: max)."
    )
    buckets: int = Field(
        10, ge=1, le=100, description="quality_score in [0,1] is cut into this many equal buckets (Nemotron-CC: 20)."
    )
    calibration_docs: int = Field(
        2000,
        ge=10,
        description="percentile: the first this-many records of each source that pass the filters before scoring "
        "calibrate the ranks; computed once per run into work/quality_calibration.json and reused on resume.",
    )


PROMPT_REF = re.compile(r"[A-Za-z0-9_.-]+(@v\d+)?")
"""A prompt as a config names it: `wikipedia` or `wikipedia@v1`."""


class RouteRule(Strict):
    min_score: float = Field(0.0, ge=0, le=1, description="Rule applies when min_score <= quality_score.")
    max_score: float = Field(1.0, ge=0, le=1, description="... and quality_score <= max_score.")
    min_bucket: int | None = Field(None, ge=0, description="... and min_bucket <= quality_bucket (if set).")
    max_bucket: int | None = Field(None, ge=0, description="... and quality_bucket <= max_bucket (if set).")
    min_perplexity: float | None = Field(
        None, gt=0, description="... and min_perplexity <= perplexity (if set; needs the `perplexity` section)."
    )
    max_perplexity: float | None = Field(
        None,
        gt=0,
        description="... and perplexity <= max_perplexity (if set). Low perplexity is text the reference model "
        "already predicts well: a rewrite that adds structure (diverse_qa, knowledge_list) teaches it more.",
    )
    action: Literal["drop", "keep", "rephrase"]
    prompts: list[str] = Field(
        default_factory=list,
        description="Prompts (prompts/*.yaml) for rephrase, as `name` or `name@vN` (then the file must be version N, "
        "as `rephrase prompts list` prints it).",
    )
    keep_original: bool = Field(True, description="For rephrase: also keep the original text in the dataset.")

    @field_validator("prompts")
    @classmethod
    def _refs(cls, refs: list[str]) -> list[str]:
        bad = [r for r in refs if not PROMPT_REF.fullmatch(r)]
        if bad:
            raise ValueError(f"prompt(s) {bad}: expected a name or name@vN (e.g. wikipedia or wikipedia@v1)")
        return refs

    @property
    def prompt_names(self) -> list[str]:
        """The prompts without their pinned versions (rephrase.llm.prompts.select_prompts checks the pins)."""
        return [r.split("@", 1)[0] for r in self.prompts]

    @model_validator(mode="after")
    def _check(self) -> RouteRule:
        if self.min_score > self.max_score:
            raise ValueError(f"min_score {self.min_score} > max_score {self.max_score}")
        if None not in (self.min_bucket, self.max_bucket) and self.min_bucket > self.max_bucket:
            raise ValueError(f"min_bucket {self.min_bucket} > max_bucket {self.max_bucket}")
        if None not in (self.min_perplexity, self.max_perplexity) and self.min_perplexity > self.max_perplexity:
            raise ValueError(f"min_perplexity {self.min_perplexity} > max_perplexity {self.max_perplexity}")
        if self.action == "rephrase" and not self.prompts:
            raise ValueError("action rephrase needs at least one prompt in `prompts`")
        if self.action != "rephrase" and self.prompts:
            raise ValueError(f"`prompts` only makes sense with action rephrase, not {self.action}")
        return self

    @property
    def by_bucket(self) -> bool:
        return self.min_bucket is not None or self.max_bucket is not None

    @property
    def by_perplexity(self) -> bool:
        return self.min_perplexity is not None or self.max_perplexity is not None


class RoutingConfig(Strict):
    rules: list[RouteRule] = Field(
        default_factory=lambda: [RouteRule(action="rephrase", prompts=["wikipedia"])],
        description="First matching rule wins; a document matching none is kept as is.",
    )


class ValidatorConfig(Strict):
    """Built once while it is validated, and thrown away: validators load their models on first use, so building
    one is cheap and proves its name and parameters before any file is touched."""

    use: str = Field(description="Validator name, e.g. length_ratio.")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("use")
    @classmethod
    def _known(cls, use: str) -> str:
        VALIDATORS.check(use)
        return use

    @field_validator("params")
    @classmethod
    def _accepted(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "use" in info.data:  # an unknown validator is reported on `use` alone
            try:
                VALIDATORS.build(info.data["use"], **params)
            except FileNotFoundError as e:  # quality_score's classifier
                raise ValueError(str(e)) from None
        return params


class SamplingConfig(Strict):
    n: int = Field(2, ge=1, le=32, description="Candidates per document for rejection sampling.")
    temperature: float = Field(0.7, ge=0, le=2, description="0 is greedy, which only makes sense with n=1.")
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(512, ge=1, description="Upper bound on tokens generated per candidate.")
    max_output_ratio: float | None = Field(
        3.0,
        gt=0,
        description="Caps each candidate at this many times its input's tokens (rounded up to a power of two): text "
        "the length validator would reject is never generated. null: max_tokens only.",
    )
    resample_rounds: int = Field(
        1, ge=0, le=8, description="Extra rounds of n candidates, only for documents whose candidates all failed."
    )
    resample_temperature_step: float = Field(0.1, ge=0, le=1, description="Temperature added at each extra round.")
    resample_n: int | None = Field(
        None,
        ge=1,
        le=32,
        description="Candidates per document in the extra rounds (null: n). n: 1 with resample_n: 3 draws one "
        "candidate per document and three more, in one request, only where the first failed: most of n=4's "
        "acceptance for far fewer tokens.",
    )

    @model_validator(mode="after")
    def _greedy_means_one_candidate(self) -> SamplingConfig:
        if self.temperature == 0 and self.n > 1:
            raise ValueError(f"temperature 0 gives {self.n} identical candidates; set n: 1 or temperature > 0")
        return self


class LLMConfig(Strict):
    engine: Literal["vllm", "vllm-server", "transformers"] = Field(
        "vllm", description="vllm: offline vllm.LLM; vllm-server: OpenAI-compatible server; transformers: generate."
    )
    model: str = Field("bundled:smollm2-135m", description="Local folder, Hub id, or bundled:smollm2-135m.")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Passed to vllm.LLM / the server as-is.")
    server_url: str | None = Field(None, description="Existing OpenAI-compatible server; null starts one.")
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the API key sent to server_url (e.g. OPENAI_API_KEY); null sends "
        "none. A server rephrase starts gets a random key of its own.",
    )
    request_timeout_s: float = Field(600, gt=0)
    max_concurrency: int = Field(64, ge=1)
    max_retries: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _key_needs_a_server_url(self) -> LLMConfig:
        if self.api_key_env is not None and self.server_url is None:
            raise ValueError(
                f"api_key_env {self.api_key_env} is only sent to server_url; set server_url or api_key_env: null"
            )
        return self


class RephraseConfig(Strict):
    prompts_dir: str = Field("../prompts", description="Folder of prompt YAML files.")
    llm: LLMConfig = Field(default_factory=LLMConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    batch_size: int = Field(
        64,
        ge=1,
        description="Documents the LLM stage reads at a time; it reads the next batch whenever fewer than this many "
        "of its requests are still generating, so the engine always holds one to two batches.",
    )
    prefetch_docs: int = Field(
        256, ge=0, description="Documents read and filtered ahead, in a thread, while the engine generates; 0: off."
    )
    chunk_tokens: int = Field(
        1024, ge=16, description="Longer documents are split on paragraph/sentence boundaries into chunks this size."
    )
    max_doc_tokens: int = Field(
        32768, ge=16, description="Documents longer than this (model tokens) are not rewritten: too_long."
    )
    validators: list[ValidatorConfig] = Field(
        default_factory=lambda: [
            ValidatorConfig(use="not_truncated"),
            ValidatorConfig(use="length_ratio", params={"low": 0.3, "high": 3.0}),
            ValidatorConfig(use="no_meta_text"),
            ValidatorConfig(use="not_a_copy", params={"max_overlap": 0.9}),
            ValidatorConfig(use="no_repetition"),
            ValidatorConfig(use="same_language"),
            ValidatorConfig(use="faithful", params={"min_similarity": 0.6}),
        ]
    )


class DedupConfig(Strict):
    exact: bool = Field(True, description="Drop rows whose normalised text was already seen (originals + synthetic).")
    minhash: MinhashConfig = Field(default_factory=MinhashConfig, description="Near-dedup over all rows.")
    semantic: SemanticDedupConfig | None = Field(
        None, description="Embedding dedup over all rows after MinHash (SemDeDup); null: off. `{}` takes defaults."
    )


class MixConfig(Strict):
    synthetic_share: float | None = Field(
        0.5, ge=0, le=1, description="Target share of synthetic tokens in the dataset (WRAP: 0.5); null keeps all."
    )
    max_upsample: float = Field(1.0, ge=1, description="Most copies of a row the mix may use; 1 never repeats.")


class PushConfig(Strict):
    repo_id: str = Field(description="Hub dataset repo, e.g. me/fineweb-rephrased; created if missing.")
    private: bool = Field(False, description="Create the repo private (an existing public repo is refused).")
    revision: str | None = Field(None, description="Branch to push to, created from main if missing.")
    stream: bool = Field(
        False,
        description="Send each parquet shard to the Hub as the finalize stage writes it (datatrove's "
        "HuggingFaceDatasetWriter), not all at the end; the end-of-run push then adds the card. A copy stays local.",
    )


class OutputConfig(Strict):
    push: PushConfig | None = Field(
        None, description="Push OUT/dataset to the Hub when the run ends, as `rephrase push` does (token: HF_TOKEN)."
    )
    shard_max_bytes: int = Field(256 * 2**20, ge=2**20, description="Parquet shards rotate at this size.")
    validation_share: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="Share of source documents held out as a `validation` split (seeded); a document and its "
        "rewrites always share a split. 0: train only.",
    )
    license: str = Field("other", description="License in the dataset card metadata.")
    pretty_name: str | None = None


class Config(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    input: InputConfig
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    heuristics: list[HeuristicConfig] = Field(default_factory=list)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    rephrase: RephraseConfig = Field(default_factory=RephraseConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    perplexity: PerplexityConfig | None = Field(
        None, description="Per-document perplexity under a reference LM, before routing; null: off."
    )
    rebalance: list[RebalanceConfig] = Field(
        default_factory=list, description="Sampling weights per group (prompt, quality_bucket, language...), in order."
    )
    curriculum: CurriculumConfig | None = Field(None, description="Order the dataset by a signal; null: no order.")
    output: OutputConfig = Field(default_factory=OutputConfig)
    base_dir: str = Field(".", description="Set by load_config: folder the relative paths are resolved against.")

    @model_validator(mode="after")
    def _routes_fit_the_buckets(self) -> Config:
        """A rule naming bucket 19 under 10 buckets would silently never match."""
        for i, rule in enumerate(self.routing.rules):
            if rule.by_perplexity and self.perplexity is None:
                raise ValueError(f"routing.rules.{i}: routes by perplexity but the `perplexity` section is not set")
            if not rule.by_bucket:
                continue
            if not self.quality.classifiers:
                raise ValueError(f"routing.rules.{i}: routes by bucket but quality.classifiers is empty")
            for bound in (rule.min_bucket, rule.max_bucket):
                if bound is not None and bound >= self.quality.buckets:
                    raise ValueError(
                        f"routing.rules.{i}: bucket {bound} does not exist; quality.buckets is "
                        f"{self.quality.buckets} (buckets 0..{self.quality.buckets - 1})"
                    )
        return self

    def resolve(self, path: str) -> str:
        """Resolve a config path: `bundled:` refs and absolute paths stay, others are relative to the config file."""
        if ":" in path.split("/")[0] or Path(path).is_absolute():
            return path
        return str((Path(self.base_dir) / path).resolve())


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem as `file: location: message`."""


def _set_dotted(data: dict, dotted: str, value: Any, origin: str) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {dotted}: {part} is not a section (it is {child!r})")
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` with the value read as YAML, so `--set rephrase.sampling.n=4` gives an int."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set rephrase.sampling.n=4")
    return key.strip(), yaml.safe_load(raw)


def load_config(path: str | Path, overrides: list[str] | None = None, updates: dict[str, Any] | None = None) -> Config:
    """Load YAML, apply `--set` overrides and CLI updates (dotted keys), validate, report every error at once."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value, f"{path} (--set {item})")
    for key, value in (updates or {}).items():
        _set_dotted(data, key, value, f"{path} (command line)")
    data["base_dir"] = str(path.resolve().parent)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            got = "" if err["type"] == "missing" else f" (got {err['input']!r})"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{path}: {loc}: {msg}{got}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
