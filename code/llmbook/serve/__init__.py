"""Inference and deployment (@sec-inference): where decode time goes, quantization, pruning, distillation,
speculative decoding, continuous batching, an OpenAI-compatible server, and export to llama.cpp and vLLM.

Modules: `kvcache` (preallocated slot cache), `engine` (continuous batching), `text` (streaming detokenizer),
`quant` (int8/int4/GPTQ weight-only quantization), `prune`, `distill`, `speculative`, `modelio` (servable model
folders), `export_gguf`, `roofline` (measuring decode), `server` (FastAPI app) and `cli`.
"""
