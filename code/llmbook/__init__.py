"""llmbook: the code of the executable book *Building a Large Language Model from Scratch*."""

__version__ = "0.1.0"
