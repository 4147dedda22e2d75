"""fastText quality scoring: every document keeps each classifier's score, an ensemble quality_score and a bucket.

The score is the probability of the classifier's positive label, computed on the same normalised text the
classifier was trained on (`filters.train.normalize_for_fasttext`); a mismatch there silently ruins the scores.
Raw probabilities of different classifiers are not comparable (one may put most web text near 0.1, another near
0.6), so with `scale: percentile` each score is first turned into its percentile rank among a calibration sample
of the run's own input (filters/calibration.py), as Nemotron-CC does before taking the max over its classifiers.
The ensemble (mean or max) is `quality_score` in [0, 1]; buckets cut it into equal slices routing rules can name,
which under percentile scaling means buckets of about equal document counts.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

if TYPE_CHECKING:  # rephrase.config checks classifier paths with resolve_classifier_path while a config loads
    from rephrase.config import ClassifierConfig


def resolve_classifier_path(path: str) -> str:
    """`bundled:NAME` is a model shipped in filters/models/; anything else is a file path."""
    if path.startswith("bundled:"):
        name = path.removeprefix("bundled:")
        folder = Path(str(files("filters") / "models"))
        for suffix in (".ftz", ".bin"):
            if (folder / f"{name}{suffix}").is_file():
                return str(folder / f"{name}{suffix}")
        known = sorted({p.stem for p in folder.glob("*.ftz")} | {p.stem for p in folder.glob("*.bin")})
        raise FileNotFoundError(f"no bundled classifier {name!r}; bundled: {known}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"classifier model {path!r} not found; train one with `rephrase train-classifier`")
    return path


HISTOGRAM_BINS = 20


class QualityScorer(PipelineStep):
    name = "quality"
    type = "📊 - SCORER"

    def __init__(
        self,
        classifiers: list[ClassifierConfig],
        buckets: int,
        ensemble: str = "mean",
        calibration: str | None = None,
    ) -> None:
        """`calibration`: a file written by filters.calibration; without it scores are used as they are."""
        super().__init__()
        self.classifiers = [(c.name, resolve_classifier_path(c.path), c.label) for c in classifiers]
        self.buckets, self.ensemble, self.calibration = buckets, ensemble, calibration
        self._models = None
        self._ranks = None

    def _load(self) -> list:
        from rephrase.loaded import fasttext_model

        if self._models is None:
            self._models = [(name, fasttext_model(path), label) for name, path, label in self.classifiers]
            if self.calibration:
                from filters.percentiles import load_ranks

                self._ranks = load_ranks(self.calibration, self.classifiers)
        return self._models

    def raw_scores(self, text: str) -> dict[str, float]:
        """Each classifier's probability of its positive label on the normalised text."""
        from filters.train import normalize_for_fasttext

        normalized = normalize_for_fasttext(text)
        scores = {}
        for name, model, label in self._load():
            labels, probs = model.predict(normalized, k=-1)
            scores[name] = float(dict(zip(labels, probs, strict=True)).get(label, 0.0))
        return scores

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if not self._load():
            yield from data
            return
        combine = max if self.ensemble == "max" else (lambda values: sum(values) / len(values))
        for doc in data:
            self.stat_update("total")
            with self.track_time():
                scores = self.raw_scores(doc.text)
                scaled = {}
                for name, score in scores.items():
                    doc.metadata[f"quality_{name}"] = round(score, 6)
                    self.stat_update(f"hist_{name}_{min(int(score * HISTOGRAM_BINS), HISTOGRAM_BINS - 1):02d}")
                    scaled[name] = self._ranks[name](score) if self._ranks else score
                    if self._ranks:
                        doc.metadata[f"quality_{name}_pct"] = round(scaled[name], 6)
                score = combine(list(scaled.values()))
                bucket = min(int(score * self.buckets), self.buckets - 1)
                doc.metadata["quality_score"] = round(score, 6)
                doc.metadata["quality_bucket"] = bucket
            self.stat_update(f"bucket_{bucket:02d}")
            yield doc


def quality_summary(counters: dict, classifiers: list[ClassifierConfig], scale: str, ensemble: str) -> dict:
    """The scorer's counters as stats.json wants them: a histogram of each classifier's raw score (HISTOGRAM_BINS
    equal bins over [0, 1]) and documents per ensemble bucket."""
    edges = [round(i / HISTOGRAM_BINS, 4) for i in range(HISTOGRAM_BINS + 1)]
    return {
        "scale": scale,
        "ensemble": ensemble,
        "scored": counters.get("total", 0),
        "buckets": {int(k[7:]): v for k, v in sorted(counters.items()) if k.startswith("bucket_")},
        "histograms": {
            c.name: {
                "edges": edges,
                "counts": [counters.get(f"hist_{c.name}_{i:02d}", 0) for i in range(HISTOGRAM_BINS)],
            }
            for c in classifiers
        },
    }
