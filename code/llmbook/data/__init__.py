"""Data curation: sources and mixtures, cleaning, heuristic and model-based quality filters, deduplication, PII
redaction and packing (@sec-data)."""
