"""Fine-tuning and alignment (@sec-finetune): from a pretrained base model to an assistant.

Modules: `chat` (the chat template, its special tokens and the assistant-masked encoder).
"""

from llmbook.finetune.chat import (CHAT_TEMPLATE, CHAT_TOKENS, ChatFormat, add_chat_tokens, encode_text,
                                   special_tokens, validate_messages)

__all__ = ["CHAT_TEMPLATE", "CHAT_TOKENS", "ChatFormat", "add_chat_tokens", "encode_text", "special_tokens",
           "validate_messages"]
