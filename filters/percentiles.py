"""Percentile ranks of classifier scores against a calibration sample (Nemotron-CC's ensemble).

Nemotron-CC turns each classifier's score into its percentile over the corpus before combining classifiers, so a
classifier whose probabilities crowd near 0.1 and one that spreads them over [0, 1] weigh the same. The sample's
sorted scores are saved beside the checksums of the models that produced them; a rank is the share of the sample
scoring below, ties counted half (mid-rank), so equal scores always get equal percentiles.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from pathlib import Path


def model_checksums(classifiers: list[tuple[str, str, str]]) -> dict[str, str]:
    """name -> sha256 of the model file and the label scored, so ranks are never applied to another model."""
    return {name: f"{hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]}:{label}" for name, p, label in classifiers}


def write_calibration(path: Path, scores: dict[str, list[float]], classifiers: list, fingerprint: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "models": model_checksums(classifiers),
                "docs": len(next(iter(scores.values()), [])),
                "scores": {name: sorted(round(s, 6) for s in values) for name, values in scores.items()},
            }
        )
    )
    tmp.replace(path)  # a run killed mid-write never leaves half a calibration to be reused


def load_ranks(path: str, classifiers: list[tuple[str, str, str]]) -> dict[str, Callable[[float], float]]:
    data = json.loads(Path(path).read_text())
    if data["models"] != model_checksums(classifiers):
        raise ValueError(f"{path} was calibrated for other classifier models; delete it to recalibrate")
    ranks = {}
    for name, _, _ in classifiers:
        sample = data["scores"][name]
        if not sample:  # nothing passed the filters in the sample: ranks are undefined, keep the score
            ranks[name] = float
            continue
        ranks[name] = lambda s, sample=sample: (bisect_left(sample, s) + bisect_right(sample, s)) / (2 * len(sample))
    return ranks
