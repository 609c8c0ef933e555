"""Prompt expansion: give each image and video placeholder of a rendered prompt its media tokens.

The chat template writes one `<|media_begin|>image<|media_content|><|media_pad|><|media_end|>` per
image and one `<|kimi_k25_video_placeholder|>` per video. Expansion repeats an image's single
`<|media_pad|>` to its token count, and replaces a video placeholder with the video's chunk prompts
joined with no separator, as the official processor does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from kimi_k25.chat import tokens
from kimi_k25.media.errors import PLACEHOLDER_MISMATCH, MediaError
from kimi_k25.media.items import MediaItem, ProcessedMedia, ProcessedVideo

_PLACEHOLDER = re.compile(re.escape(tokens.IMAGE_PROMPT) + "|" + re.escape(tokens.VIDEO_PLACEHOLDER))


@dataclass(frozen=True)
class ExpandedPrompt:
    """A prompt with its media tokens in place, and the vision-tower items in the order of their tokens."""

    text: str
    items: tuple[MediaItem, ...]

    @property
    def num_media_tokens(self) -> int:
        return sum(item.num_tokens for item in self.items)


def expand_media_prompt(prompt: str, media: Sequence[ProcessedMedia]) -> ExpandedPrompt:
    """Expand the placeholders of `prompt` with `media`, given in the order the placeholders appear.

    Raises MediaError when the number or the kinds of placeholders and media items differ.
    """
    placeholders = [match.group(0) for match in _PLACEHOLDER.finditer(prompt)]
    num_images = sum(1 for text in placeholders if text == tokens.IMAGE_PROMPT)
    num_videos = len(placeholders) - num_images
    media_images = sum(1 for item in media if not isinstance(item, ProcessedVideo))
    media_videos = len(media) - media_images
    if (num_images, num_videos) != (media_images, media_videos):
        raise MediaError(
            f"The prompt has {num_images} image and {num_videos} video placeholders but {media_images} images and "
            f"{media_videos} videos were processed; pass exactly one processed item per placeholder.",
            None, PLACEHOLDER_MISMATCH)

    for position, (text, item) in enumerate(zip(placeholders, media)):
        expected_video = text == tokens.VIDEO_PLACEHOLDER
        if expected_video != isinstance(item, ProcessedVideo):
            expected, got = ("a video", "an image") if expected_video else ("an image", "a video")
            raise MediaError(
                f"Media placeholder {position} of the prompt is for {expected} but media item {position} is {got}; "
                "pass the media in the order their placeholders appear in the prompt.", None, PLACEHOLDER_MISMATCH)

    items: list[MediaItem] = []
    remaining = iter(media)

    def replace(match: re.Match[str]) -> str:
        item = next(remaining)
        if isinstance(item, ProcessedVideo):
            items.extend(item.chunks)
        else:
            items.append(item)
        return item.expanded_prompt()

    text = _PLACEHOLDER.sub(replace, prompt)
    return ExpandedPrompt(text=text, items=tuple(items))
