"""Held-out evaluation of a trained quality classifier: metrics, threshold table, model card and printed report.

Precision, recall and F1 are for the positive class at score 0.5; ROC-AUC says how well the score ranks, whatever
the cut-off. The threshold table is what a user reads to pick a cut-off: for each one, the share of held-out
texts kept, how many of those are positives (precision) and how many positives survive (recall). The held-out
split has both classes in equal numbers when `balance` is on, so `kept` is not the share a real crawl would keep.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CUTOFFS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class TrainReport:
    name: str
    version: int
    model_path: Path
    card_path: Path
    model_sha256: str
    sources: dict[str, int]
    """Texts taken from each source, keyed `hq:<source>` / `lq:<source>` (after dedup and `limit`)."""
    counts: dict[str, dict[str, int]]
    """{"train"|"test": {"hq": n, "lq": n}} after balancing and the split."""
    metrics: dict[str, float]
    """Held-out precision, recall, f1, roc_auc, accuracy of the saved model."""
    train_metrics: dict[str, float]
    thresholds: list[dict[str, float]]
    seconds: float
    notes: list[str]


def binary_metrics(y: list[int], scores: list[float]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    pred = [int(s >= 0.5) for s in scores]
    p, r, f1, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    values = {
        "precision": p,
        "recall": r,
        "f1": f1,
        "roc_auc": roc_auc_score(y, scores),
        "accuracy": accuracy_score(y, pred),
    }
    return {k: round(float(v), 4) for k, v in values.items()}


def threshold_table(y: list[int], scores: list[float]) -> list[dict[str, float]]:
    rows = []
    for cut in CUTOFFS:
        kept = [label for label, s in zip(y, scores, strict=True) if s >= cut]
        rows.append(
            {
                "cutoff": cut,
                "kept": round(len(kept) / len(y), 4),
                "precision": round(sum(kept) / len(kept), 4) if kept else 1.0,
                "recall": round(sum(kept) / max(sum(y), 1), 4),
            }
        )
    return rows


def fasttext_version() -> str:
    """The distribution that provides the `fasttext` module (several do; DATA.md says which ones work)."""
    dists = importlib.metadata.packages_distributions().get("fasttext", ["fasttext"])
    return ", ".join(f"{d} {importlib.metadata.version(d)}" for d in sorted(set(dists)))


def write_card(report: TrainReport, settings: dict[str, Any]) -> None:
    """`<output>.json` beside the model: what it is, what it was trained on, how it scored, and its checksum."""
    card = {
        "name": report.name,
        "version": report.version,
        "ref": f"{report.name}@v{report.version}",
        "score": "probability of __label__hq on filters.train.normalize_for_fasttext(text), in [0, 1]",
        "model_file": report.model_path.name,
        "model_bytes": report.model_path.stat().st_size,
        "model_sha256": report.model_sha256,
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fasttext": fasttext_version(),
        "sources": report.sources,
        "counts": report.counts,
        **settings,
        "metrics_test": report.metrics,
        "metrics_train": report.train_metrics,
        "thresholds_test": report.thresholds,
        "notes": report.notes,
    }
    report.card_path.write_text(json.dumps(card, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def format_report(report: TrainReport) -> str:
    """Human-readable summary for `rephrase train-classifier`."""
    lines = [f"{report.name}@v{report.version}: {report.model_path} ({report.model_path.stat().st_size:,} bytes)"]
    lines += [f"  {n:>6}  {source}" for source, n in report.sources.items()]
    lines += [f"  {split:<5} hq {c['hq']:>6}  lq {c['lq']:>6}" for split, c in report.counts.items()]
    for title, m in (("held-out", report.metrics), ("train", report.train_metrics)):
        lines.append(f"  {title:<8} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))
    lines.append("  cut-off    kept  precision  recall   (held-out; kept: score >= cut-off)")
    lines += [
        f"  {r['cutoff']:>7.2f} {r['kept']:>7.1%} {r['precision']:>10.4f} {r['recall']:>7.4f}"
        for r in report.thresholds
    ]
    lines += [f"  note: {n}" for n in report.notes]
    lines.append(f"  model card: {report.card_path} ({report.seconds} s)")
    return "\n".join(lines)
