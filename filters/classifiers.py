"""fastText quality scoring: every document keeps each classifier's score and a quality bucket.

The score is the probability of the classifier's positive label, computed on the same normalised text the
classifier was trained on (`filters.train.normalize_for_fasttext`); a mismatch there silently ruins the scores.
With several classifiers the document's `quality_score` is their mean (the Nemotron-CC percentile ensemble is
the planned replacement). Buckets cut [0, 1] into equal slices so routing rules can name them.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

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


class QualityScorer(PipelineStep):
    name = "quality"
    type = "📊 - SCORER"

    def __init__(self, classifiers: list[ClassifierConfig], buckets: int) -> None:
        super().__init__()
        self.classifiers = [(c.name, resolve_classifier_path(c.path), c.label) for c in classifiers]
        self.buckets = buckets
        self._models = None

    def _load(self) -> list:
        import fasttext

        if self._models is None:
            self._models = [(name, fasttext.load_model(path), label) for name, path, label in self.classifiers]
        return self._models

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        models = self._load()
        if not models:
            yield from data
            return
        from filters.train import normalize_for_fasttext

        for doc in data:
            self.stat_update("total")
            with self.track_time():
                text = normalize_for_fasttext(doc.text)
                scores = {}
                for name, model, label in models:
                    labels, probs = model.predict(text, k=-1)
                    scores[name] = float(dict(zip(labels, probs, strict=True)).get(label, 0.0))
                    doc.metadata[f"quality_{name}"] = round(scores[name], 6)
                score = sum(scores.values()) / len(scores)
                bucket = min(int(score * self.buckets), self.buckets - 1)
                doc.metadata["quality_score"] = round(score, 6)
                doc.metadata["quality_bucket"] = bucket
            self.stat_update(f"bucket_{bucket:02d}")
            yield doc
