"""Evaluating language models (@sec-evaluation): perplexity, a benchmark harness, generation metrics, ratings, contamination.

Modules: `models` (the evaluation interface and its adapters), `perplexity`, `tasks`, `harness`,
`sandbox` (code execution and pass@k), `bleu` (BLEU, chrF), `rouge`, `ratings` (Elo, Bradley-Terry),
`contamination`, `checkpoints` (runs of the book's trainer as models), `tiny` (small random models for tests),
`cli` (`llmbook eval`).
"""
