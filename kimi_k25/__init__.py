"""Kimi K2.5 end to end: model, checkpoint, tokenizer and chat format, engine, OpenAI-compatible server."""
