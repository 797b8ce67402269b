"""Fine-tuning and alignment (@sec-finetune): from a pretrained base model to an assistant.

Modules: `chat` (the chat template, its special tokens and the assistant-masked encoder), `synthetic` (instruction
tasks with checkable answers), `data` (instruction, chat and preference files; encoding; loaders), `config` (the TOML
presets), `base` (the base model, chat tokens, loading fine-tuned runs), `lora` and `nf4` (LoRA and QLoRA from
scratch), `memory` (measured training memory), `reward` (Bradley-Terry reward model), `dpo` (DPO, IPO), `grpo` (RL
with verifiable rewards), `evaluate` (accuracy, win rates, alignment tax), `pipeline` (each stage as a trainer run,
and their cache), `cli` (`llmbook finetune`) and `interactive` (`llmbook chat`).
"""

from llmbook.finetune.chat import (CHAT_TEMPLATE, CHAT_TOKENS, ChatFormat, add_chat_tokens, encode_text,
                                   special_tokens, validate_messages)

__all__ = ["CHAT_TEMPLATE", "CHAT_TOKENS", "ChatFormat", "add_chat_tokens", "encode_text", "special_tokens",
           "validate_messages"]
