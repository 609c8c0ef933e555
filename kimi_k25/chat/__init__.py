"""Kimi K2.5 chat format: prompt rendering, request validation and the reasoning parser."""

from kimi_k25.chat.format import ChatFormat, is_thinking
from kimi_k25.chat.jinja_renderer import (
    ChatTemplateError,
    ChatTemplateInputError,
    ChatTemplateSecurityError,
    JinjaChatTemplate,
    load_packaged_template,
)
from kimi_k25.chat.reasoning import ReasoningStreamParser, split_reasoning
from kimi_k25.chat.renderer import render_chat
from kimi_k25.chat.validation import ChatFormatError

__all__ = [
    "ChatFormat",
    "ChatFormatError",
    "ChatTemplateError",
    "ChatTemplateInputError",
    "ChatTemplateSecurityError",
    "JinjaChatTemplate",
    "ReasoningStreamParser",
    "is_thinking",
    "load_packaged_template",
    "render_chat",
    "split_reasoning",
]
