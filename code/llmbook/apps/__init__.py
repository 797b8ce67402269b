"""Applications (@sec-applications): retrieval-augmented generation built from its parts.

Modules: `chunking` (documents into passages), `bm25` (lexical retrieval), `embed` (a contrastively trained
bi-encoder on the book's model), `index` (exact and FAISS vector search, top-k with a stated tie rule),
`fusion` (reciprocal rank fusion), `rag` (retrieval evaluation, prompts that cite sources, grounding checks,
prompt-injection screening), `store` (the on-disk index of `llmbook rag`), `card` (model cards and
datasheets), `cli` (`llmbook rag`). Safety, bias and memorisation checks live in `llmbook.eval`.
"""
