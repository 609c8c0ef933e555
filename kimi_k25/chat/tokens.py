"""Marker strings of the Kimi K2.5 chat format, as they appear in prompt and completion text.

All of them are single tokens in the K2.5 vocabulary except ``VIDEO_PLACEHOLDER``, a text marker
that the media code replaces with per-chunk prompts before tokenization.
"""

IM_USER = "<|im_user|>"
IM_ASSISTANT = "<|im_assistant|>"
IM_SYSTEM = "<|im_system|>"
IM_MIDDLE = "<|im_middle|>"
IM_END = "<|im_end|>"

THINK_BEGIN = "<think>"
THINK_END = "</think>"
THINK_EMPTY = THINK_BEGIN + THINK_END

TOOL_CALLS_SECTION_BEGIN = "<|tool_calls_section_begin|>"
TOOL_CALLS_SECTION_END = "<|tool_calls_section_end|>"
TOOL_CALL_BEGIN = "<|tool_call_begin|>"
TOOL_CALL_ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
TOOL_CALL_END = "<|tool_call_end|>"

MEDIA_BEGIN = "<|media_begin|>"
MEDIA_CONTENT = "<|media_content|>"
MEDIA_PAD = "<|media_pad|>"
MEDIA_END = "<|media_end|>"
# One image in the prompt; the media code later repeats MEDIA_PAD to the image's token count.
IMAGE_PROMPT = MEDIA_BEGIN + "image" + MEDIA_CONTENT + MEDIA_PAD + MEDIA_END
VIDEO_PLACEHOLDER = "<|kimi_k25_video_placeholder|>"
