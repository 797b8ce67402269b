"""The curation pipeline: clean + filter, exact dedup, MinHash dedup, PII redaction, with a report that adds up (@sec-data-pipeline)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from llmbook.progress import progress_bar

from llmbook.data.dedup import MinHashConfig, exact_duplicates, near_duplicates
from llmbook.data.filters import FILTERS, FilterConfig, QualityFilter
from llmbook.data.pii import redact, redact_all

DEDUP_METHODS = ("exact", "minhash")


def resolve_filters(spec: str | Sequence[str] | None) -> list[str]:
    """Filter names from a spec: 'default' (all), 'none', or names separated by commas."""
    if spec is None or spec == "default":
        return list(FILTERS)
    if spec == "none":
        return []
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [n for n in names if n not in FILTERS]
    if unknown:
        raise ValueError(f"unknown filters {unknown}; choose from default, none, {', '.join(FILTERS)}")
    return names


def prepare(
    records: Iterable[dict[str, Any]],
    filters: str | Sequence[str] | None = "default",
    filter_config: FilterConfig | None = None,
    dedup: Sequence[str] = DEDUP_METHODS,
    minhash: MinHashConfig | None = None,
    pii: bool = True,
    skipped: Counter | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the stages in order and return `(kept records, report)` (@sec-data-pipeline).

    The report counts documents at every stage; `input = kept + removed`, where removed includes input records
    that could not be read (`skipped`, counted by the readers) and documents each stage dropped. Records stream
    through the filters; the ones kept are held in memory for deduplication (at web scale one would keep only
    the MinHash signatures and a document index, and shard the LSH buckets). With `pii`, every string that
    leaves the pipeline is redacted: the kept records (all their fields) and the report with its examples of
    removed documents.
    """
    unknown = [d for d in dedup if d not in DEDUP_METHODS]
    if unknown:
        raise ValueError(f"unknown dedup methods {unknown}; choose from {', '.join(DEDUP_METHODS)}")
    quality = QualityFilter(filter_config, resolve_filters(filters), scrub=(lambda t: redact(t)[0]) if pii else None)
    repaired = 0

    def counted(recs: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        nonlocal repaired
        for rec in recs:
            repaired += bool(rec.get("encoding_errors"))
            yield rec

    kept = list(quality(progress_bar(counted(records), desc="filter", unit="doc", progress=progress)))
    skipped_total = sum((skipped or Counter()).values())
    if quality.input_documents == 0 and skipped_total == 0:
        raise ValueError("the input holds no documents (empty corpus)")
    removed: dict[str, int] = {"unreadable": skipped_total, "quality_filters": quality.report()["removed_documents"]}
    report: dict[str, Any] = {
        "input_documents": quality.input_documents + skipped_total,
        "unreadable": dict(skipped or {}),
        "encoding_repaired_documents": repaired,
        "filters": quality.report(),
    }
    if "exact" in dedup:
        keep = exact_duplicates(r["text"] for r in kept)
        removed["exact_duplicates"] = int((~keep).sum())
        kept = [r for r, k in zip(kept, keep) if k]
    if "minhash" in dedup:
        cfg = minhash or MinHashConfig()
        result = near_duplicates([r["text"] for r in kept], cfg, progress=progress)
        removed["near_duplicates"] = int((~result.keep).sum())
        examples = [
            {"kept": kept[int(i)].get("id"), "removed": kept[int(j)].get("id"), "estimated_jaccard": round(float(sim), 3)}
            for (i, j), sim in zip(result.pairs[:5], result.similarities[:5])
        ]
        report["minhash"] = {**result.report(), "examples": examples, "config": asdict(cfg)}
        kept = [r for r, k in zip(kept, result.keep) if k]
    if pii:
        counts: Counter = Counter()
        docs_with_pii = 0
        for i, rec in enumerate(kept):
            text, found = redact(rec["text"])
            counts += found
            docs_with_pii += bool(found)
            kept[i] = {**redact_all({k: v for k, v in rec.items() if k != "text"}), "text": text}
        report["pii"] = {"documents_redacted": docs_with_pii, "spans": dict(sorted(counts.items()))}
    report["removed"] = removed
    report["kept_documents"] = len(kept)
    report["kept_characters"] = sum(len(r["text"]) for r in kept)
    report["sources"] = dict(sorted(Counter(str(r.get("source", "unknown")) for r in kept).items()))
    if report["input_documents"] != report["kept_documents"] + sum(removed.values()):
        raise AssertionError(f"curation counts do not add up: {report['input_documents']} != {len(kept)} + {removed}")
    return kept, (redact_all(report) if pii else report)
