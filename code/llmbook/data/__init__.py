"""Data curation: sources, cleaning and quality filters, deduplication, PII redaction and packing (@sec-data)."""
