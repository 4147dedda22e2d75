"""Train and evaluate a fastText quality classifier the DCLM way: curated positives against low-quality negatives.

After DCLM's `baselines/train_fasttext_classifier.py` (seeded hold-out split, train, precision/recall on both
splits), with a stratified split and a threshold table as in FineWeb-Edu's `train_edu_bert.py`, because choosing a
cut-off is what a user does next. Runs are deterministic: seeded sampling and split, one training thread
(fastText's Hogwild threads race), so a config reproduces its model byte for byte on one machine.

Models are saved quantized (`.ftz`) by default: the starter (32 dimensions, 200k n-gram buckets) is 27 MB as a
`.bin`; product quantization keeping the 10,000 rows with the largest norms, then retraining them, brings it to
0.33 MB, and its held-out ROC-AUC did not drop (it rose: the retraining adds epochs).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from filters.train_data import BUILTINS, builtin_texts, file_texts
from filters.train_report import TrainReport, binary_metrics, format_report, threshold_table, write_card
from rephrase.config import ConfigError

# format_report and TrainReport live in train_report.py; the CLI takes them from here, beside train_classifier
__all__ = [
    "TrainReport",
    "format_report",
    "hq_scores",
    "load_train_config",
    "normalize_for_fasttext",
    "train_classifier",
]

LABELS = {1: "__label__hq", 0: "__label__lq"}
_PUNCTUATION = re.compile(r"([^\w\s])")
_DIGIT = re.compile(r"\d")


def normalize_for_fasttext(text: str) -> str:
    """The one text form the classifier sees, in training and in scoring (filters/classifiers.py).

    DCLM only joins lines (fastText reads one document per line). On top of that, as in CCNet's normaliser: NFKC,
    lowercase and digits as 0, which shrink the vocabulary of a small training set. Punctuation is split off into
    its own tokens rather than stripped: `|`, `»`, `©` and runs of `!` are evidence of boilerplate and spam, while
    `end.` and `end` would otherwise be different words.
    """
    text = _DIGIT.sub("0", unicodedata.normalize("NFKC", text).lower())
    return " ".join(_PUNCTUATION.sub(r" \1 ", text).split())


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BuiltinSource(Strict):
    kind: Literal["builtin"]
    name: str = Field(description="A real corpus fetched from package registries; see filters/train_data.py.")
    limit: int | None = Field(None, ge=1, description="Texts taken after a seeded shuffle; null takes all.")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in BUILTINS:
            raise ValueError(f"unknown builtin source {name!r}; known: {', '.join(sorted(BUILTINS))}")
        return name

    def label(self) -> str:
        return f"builtin:{self.name}"


class FileSource(Strict):
    kind: Literal["jsonl", "parquet", "hf_disk"]
    path: str = Field(description="Relative paths start at the config file's folder.")
    text_key: str = Field("text", description="Field holding the text.")
    limit: int | None = Field(None, ge=1, description="Texts taken after a seeded shuffle; null takes all.")

    def label(self) -> str:
        return f"{self.kind}:{self.path}"


Source = Annotated[BuiltinSource | FileSource, Field(discriminator="kind")]


class FastTextParams(Strict):
    dim: int = Field(32, ge=2, description="Embedding size.")
    epoch: int = Field(10, ge=1)
    lr: float = Field(0.1, gt=0)
    word_ngrams: int = Field(2, ge=1, description="Word n-grams up to this length (DCLM: 2).")
    min_count: int = Field(2, ge=1, description="Words seen fewer times are dropped from the vocabulary.")
    bucket: int = Field(200_000, ge=0, description="Hash buckets for n-grams.")
    seed: int = Field(0, description="Seeds fastText, the sampling and the split.")
    thread: int = Field(1, ge=1, description="1 makes training reproducible; more threads race (Hogwild).")


class TrainConfig(Strict):
    name: str
    version: int = Field(ge=1, description="Bump when the model's scores change.")
    positives: list[Source] = Field(min_length=1, description="High-quality texts, label __label__hq.")
    negatives: list[Source] = Field(min_length=1, description="Low-quality texts, label __label__lq.")
    params: FastTextParams = Field(default_factory=FastTextParams)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out share of each class (stratified).")
    balance: bool = Field(True, description="Downsample the larger class to the smaller one's size.")
    quantize_cutoff: int | None = Field(
        10_000, ge=0, description="Save a quantized .ftz keeping this many rows (0: all); null saves the full .bin."
    )
    output: str = Field(description="Model path without suffix; .ftz/.bin and .json (model card) are written.")
    base_dir: Path = Field(Path("."), exclude=True, description="Folder of the config file; set by the loader.")

    def resolve(self, path: str) -> Path:
        return Path(path) if Path(path).is_absolute() else self.base_dir / path


def load_train_config(path: str | Path) -> TrainConfig:
    """Load and validate a training config; every problem is reported at once as `file: key: message (got value)`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate({**data, "base_dir": path.resolve().parent})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            got = "" if err["type"] == "missing" else f" (got {err['input']!r})"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{path}: {loc}: {msg}{got}")
        raise ConfigError("invalid training config:\n  " + "\n  ".join(lines)) from None


def hq_scores(model: Any, texts: list[str]) -> list[float]:
    """Probability of `__label__hq` for each text, the scoring convention of filters/classifiers.py."""
    labels, probs = model.predict([normalize_for_fasttext(t) for t in texts], k=-1)
    return [float(dict(zip(ls, ps, strict=True)).get(LABELS[1], 0.0)) for ls, ps in zip(labels, probs, strict=True)]


def _collect(sources: list[BuiltinSource | FileSource], cfg: TrainConfig, tag: str) -> tuple[list[str], dict]:
    """Normalised, deduplicated texts of one class; each source shuffled with its own seed, then cut to `limit`."""
    texts, counts = [], {}
    for i, source in enumerate(sources):
        if isinstance(source, BuiltinSource):
            raw = builtin_texts(source.name)
        else:
            raw = file_texts(source.kind, cfg.resolve(source.path), source.text_key)
        unique = sorted({t for t in map(normalize_for_fasttext, raw) if t})
        random.Random(f"{cfg.params.seed}:{tag}:{i}").shuffle(unique)
        taken = unique[: source.limit]
        counts[f"{tag}:{source.label()}"] = len(taken)
        texts += taken
    return list(dict.fromkeys(texts)), counts


def _fit_in_fresh_process(train_file: Path, p: FastTextParams, quantize_cutoff: int | None, model_path: Path) -> None:
    """Train (and quantize) in a fresh, bare Python process (filters.fasttext_fit says why), so a config
    reproduces its model byte for byte. A plain subprocess, not multiprocessing: spawn would re-run the caller's
    unguarded main script."""
    job = {"train_file": str(train_file), "params": p.model_dump(), "cutoff": quantize_cutoff, "out": str(model_path)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path])}
    command = [sys.executable, "-m", "filters.fasttext_fit", json.dumps(job)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fastText training failed (exit {done.returncode}):\n{done.stderr.strip()[-2000:]}")


def _split(cfg: TrainConfig, pos: list[str], neg: list[str]) -> dict[str, list[tuple[int, str]]]:
    """Shuffle each class (sources come in config order), balance if asked, and split each class on its own, so
    both splits keep the class ratio (stratified)."""
    seed = cfg.params.seed
    pos = random.Random(f"{seed}:shuffle:hq").sample(pos, len(pos))
    neg = random.Random(f"{seed}:shuffle:lq").sample(neg, len(neg))
    if cfg.balance:
        n = min(len(pos), len(neg))
        pos, neg = pos[:n], neg[:n]
    splits: dict[str, list[tuple[int, str]]] = {"train": [], "test": []}
    for y, texts in ((1, pos), (0, neg)):
        n_test = round(len(texts) * cfg.test_fraction)
        if n_test < 1 or n_test >= len(texts):
            which = "positive" if y else "negative"
            raise ValueError(f"{len(texts)} {which} texts cannot be split with test_fraction {cfg.test_fraction}")
        splits["test"] += [(y, t) for t in texts[:n_test]]
        splits["train"] += [(y, t) for t in texts[n_test:]]
    random.Random(f"{seed}:order").shuffle(splits["train"])  # fastText learns in file order: mix the classes
    return splits


def train_classifier(config_path: Path) -> TrainReport:
    """Train the classifier a config describes, evaluate the saved model on the held-out split, write the model
    and its card. Two runs of one config on one machine give the same model file and the same numbers."""
    import fasttext

    started = time.monotonic()
    cfg = load_train_config(config_path)
    pos, pos_counts = _collect(cfg.positives, cfg, "hq")
    neg, neg_counts = _collect(cfg.negatives, cfg, "lq")
    notes = []
    if conflicts := set(pos) & set(neg):
        notes.append(f"{len(conflicts)} texts were in both classes and were dropped")
        pos, neg = [t for t in pos if t not in conflicts], [t for t in neg if t not in conflicts]
    splits = _split(cfg, pos, neg)

    suffix = ".ftz" if cfg.quantize_cutoff is not None else ".bin"
    model_path = cfg.resolve(cfg.output).resolve().parent / (Path(cfg.output).name + suffix)  # names may hold dots
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("".join(f"{LABELS[y]} {t}\n" for y, t in splits["train"]), encoding="utf-8")
        _fit_in_fresh_process(train_file, cfg.params, cfg.quantize_cutoff, model_path)

    model = fasttext.load_model(str(model_path))  # evaluate what ships
    ys = {name: [y for y, _ in rows] for name, rows in splits.items()}
    scores = {name: hq_scores(model, [t for _, t in rows]) for name, rows in splits.items()}
    report = TrainReport(
        name=cfg.name,
        version=cfg.version,
        model_path=model_path,
        card_path=model_path.with_suffix(".json"),
        model_sha256=hashlib.sha256(model_path.read_bytes()).hexdigest(),
        sources={**pos_counts, **neg_counts},
        counts={name: {"hq": sum(y), "lq": len(y) - sum(y)} for name, y in ys.items()},
        metrics=binary_metrics(ys["test"], scores["test"]),
        train_metrics=binary_metrics(ys["train"], scores["train"]),
        thresholds=threshold_table(ys["test"], scores["test"]),
        seconds=round(time.monotonic() - started, 1),
        notes=notes,
    )
    settings = {"config": Path(config_path).name}
    settings |= cfg.model_dump(include={"params", "test_fraction", "balance", "quantize_cutoff"})
    write_card(report, settings)
    return report
