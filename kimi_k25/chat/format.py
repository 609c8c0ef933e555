"""The chat format the server uses: request validation, prompt rendering and the thinking switch.

A checkpoint that ships a chat template is rendered with that template, so a fine-tuned
checkpoint keeps its own format. Other checkpoints use the built-in K2.5 renderer. Both paths
receive the same validated and normalized messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kimi_k25.chat.jinja_renderer import JinjaChatTemplate
from kimi_k25.chat.renderer import render_chat
from kimi_k25.chat.tool_declaration import encode_tools_typescript
from kimi_k25.chat.validation import (
    ChatFormatError,
    deep_sort_keys,
    normalize_messages,
    validate_messages,
    validate_tools,
)

logger = logging.getLogger(__name__)

# chat_template_kwargs may set other template variables, but not the ones render() sets itself.
_RESERVED_TEMPLATE_VARIABLES = ("messages", "tools", "add_generation_prompt")

# The variables the built-in renderer reads, as the K2.5 template does.
BUILT_IN_TEMPLATE_VARIABLES = frozenset({"thinking", "tools_ts_str"})

ToolDeclarationEncoder = Callable[[list[dict]], str]


def is_thinking(chat_template_kwargs: Mapping[str, Any] | None) -> bool:
    """Return whether a request runs in thinking mode.

    Only ``{"thinking": false}`` selects instant mode; an absent key, true or any other value
    keeps thinking on, exactly as the K2.5 template decides. The reasoning parser must use this
    same rule so that it agrees with the prompt.
    """
    if not chat_template_kwargs:
        return True
    return chat_template_kwargs.get("thinking", True) is not False


class ChatFormat:
    """Renders OpenAI-style chat requests into K2.5 prompt text.

    Args:
        template: the checkpoint's chat template, or None for the built-in renderer.
        tool_declaration_encoder: turns the (key-sorted) tool list into the TypeScript-style
            declaration the model was trained on, by default the built-in
            ``encode_tools_typescript``. With None, or when the encoder raises ValueError,
            TypeError or KeyError on a schema, tools are declared as compact JSON, as the
            checkpoint's own code does.
    """

    def __init__(
        self,
        template: JinjaChatTemplate | None = None,
        *,
        tool_declaration_encoder: ToolDeclarationEncoder | None = encode_tools_typescript,
    ) -> None:
        self.template = template
        self.tool_declaration_encoder = tool_declaration_encoder

    @classmethod
    def from_dir(
        cls,
        checkpoint_dir: str | Path,
        *,
        tool_declaration_encoder: ToolDeclarationEncoder | None = encode_tools_typescript,
    ) -> ChatFormat:
        """Use the chat template that ``checkpoint_dir`` ships, or the built-in renderer when it ships none."""
        template = JinjaChatTemplate.from_checkpoint_dir(checkpoint_dir)
        chat_format = cls(template, tool_declaration_encoder=tool_declaration_encoder)
        if template is None:
            logger.info("No chat template in %s; using the built-in K2.5 renderer", checkpoint_dir)
        else:
            logger.info("Using the chat template from %s", template.origin)
        return chat_format

    @property
    def template_variables(self) -> frozenset[str]:
        """Variables that ``chat_template_kwargs`` can set for this format."""
        if self.template is None:
            return BUILT_IN_TEMPLATE_VARIABLES
        return self.template.variables - frozenset(_RESERVED_TEMPLATE_VARIABLES)

    @property
    def source(self) -> str:
        """Where the prompt format comes from: the template's origin, or ``built-in renderer``."""
        return "built-in renderer" if self.template is None else self.template.origin

    def render(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict | None = None,
    ) -> str:
        """Validate a request and render its prompt text.

        ``chat_template_kwargs`` contains extra template variables: ``thinking`` (only false selects
        instant mode) and optionally ``tools_ts_str``, a ready-made tool declaration. Raises
        ChatFormatError for invalid input. A checkpoint template can also raise the errors of
        ``JinjaChatTemplate.render``.
        """
        template_kwargs = _check_template_kwargs(chat_template_kwargs)
        validate_messages(messages)
        validate_tools(tools)
        messages = normalize_messages(messages)
        # An empty tool list declares nothing, the same as no tools.
        sorted_tools = deep_sort_keys(tools) if tools else None
        tools_ts_str = template_kwargs.get("tools_ts_str")
        if sorted_tools and tools_ts_str is None:
            tools_ts_str = self._encode_tool_declaration(sorted_tools)

        if self.template is None:
            return render_chat(
                messages,
                tools=sorted_tools,
                tools_ts_str=tools_ts_str,
                thinking=is_thinking(template_kwargs),
                add_generation_prompt=add_generation_prompt,
            )

        variables = dict(template_kwargs)
        if tools_ts_str is not None:
            variables["tools_ts_str"] = tools_ts_str
        return self.template.render(
            messages=messages,
            tools=sorted_tools,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )

    def _encode_tool_declaration(self, sorted_tools: list[dict]) -> str | None:
        # Without an encoder the prompt declares tools as JSON, which serving stacks report lowers
        # tool-call accuracy.
        if self.tool_declaration_encoder is None:
            return None
        try:
            return self.tool_declaration_encoder(sorted_tools)
        except (ValueError, TypeError, KeyError) as error:
            logger.warning("Tool declaration encoder failed (%s: %s); declaring tools as JSON", type(error).__name__, error)
            return None


def _check_template_kwargs(chat_template_kwargs: Any) -> dict[str, Any]:
    if chat_template_kwargs is None:
        return {}
    if not isinstance(chat_template_kwargs, Mapping):
        raise ChatFormatError(
            f"chat_template_kwargs must be an object, got {type(chat_template_kwargs).__name__}", "chat_template_kwargs"
        )
    for key in _RESERVED_TEMPLATE_VARIABLES:
        if key in chat_template_kwargs:
            raise ChatFormatError(
                f"chat_template_kwargs may not set {key!r}; pass it as the request field instead",
                f"chat_template_kwargs.{key}",
            )
    return dict(chat_template_kwargs)
