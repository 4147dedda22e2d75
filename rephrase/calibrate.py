"""Quality calibration before a run: the sample `scale: percentile` ranks against, read with the run's own steps.

A streaming run cannot see the whole corpus before routing its first document, so the ranks come from the first
`quality.calibration_docs` records of each source, those of them that pass the run's filters ahead of scoring
(extraction, language, heuristics, exact dedup): the kind of documents the scorer will actually see. It is
computed once per output folder and reused on resume (and by every task of a cluster run), unless the
classifiers, the inputs or the filters changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rephrase.config import Config


def _fingerprint(cfg: Config) -> str:
    relevant = cfg.model_dump(include={"input", "language", "heuristics", "quality", "dedup"})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ensure_calibration(cfg: Config, path: Path) -> str | None:
    """Write (or reuse) the calibration file the QualityScorer ranks against; None when scores are used as they
    are. Its folder also holds the sample's frozen input lists."""
    if cfg.quality.scale != "percentile" or not cfg.quality.classifiers:
        return None
    from filters.classifiers import QualityScorer
    from filters.percentiles import write_calibration
    from rephrase.estimate import sample_records
    from rephrase.pipeline import filter_steps

    fingerprint = _fingerprint(cfg)
    if path.is_file() and json.loads(path.read_text()).get("fingerprint") == fingerprint:
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scorer = QualityScorer(cfg.quality.classifiers, cfg.quality.buckets)
    stream = sample_records(cfg, cfg.input.sources, cfg.quality.calibration_docs, path.parent / "calibration_inputs")
    for name, step in filter_steps(cfg, None):
        if name == "quality":
            break
        stream = step(stream, rank=0, world_size=1)
    scores: dict[str, list[float]] = {name: [] for name, _, _ in scorer.classifiers}
    for doc in stream:
        for name, score in scorer.raw_scores(doc.text).items():
            scores[name].append(score)
    write_calibration(path, scores, scorer.classifiers, fingerprint)
    n = len(next(iter(scores.values())))
    print(f"rephrase: quality percentiles calibrated on {n} documents -> {path}")
    return str(path)
