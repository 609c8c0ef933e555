"""From chat messages to processed media: find the media parts, load their URLs, decode and patchify.

The parts are returned in the order the chat template renders their placeholders (message by
message, part by part), which is the order `expand_media_prompt` expects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kimi_k25.media.config import MediaConfig
from kimi_k25.media.errors import INVALID_MEDIA_PART, TOO_MANY_MEDIA_ITEMS, MediaError
from kimi_k25.media.image import process_image
from kimi_k25.media.items import ProcessedMedia
from kimi_k25.media.sources import MediaSourcePolicy, load_media_bytes
from kimi_k25.media.video import process_video

logger = logging.getLogger(__name__)

IMAGE_PART_TYPES = ("image_url", "image")
VIDEO_PART_TYPES = ("video_url", "video")


@dataclass(frozen=True)
class MediaPart:
    """One image or video content part of a request."""

    kind: Literal["image", "video"]
    url: str
    # OpenAI-style path of the part, such as messages[0].content[1].
    param: str


def find_media_parts(messages: Sequence[Any]) -> list[MediaPart]:
    """Return the image and video parts of `messages` in prompt order.

    Accepts OpenAI's `{"type": "image_url", "image_url": {"url": ...}}` (and `video_url`), the URL as
    a plain string in place of the object, and `{"type": "image", "image": URL}` or `"url": URL`.
    """
    parts: list[MediaPart] = []
    for message_index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            continue
        for part_index, part in enumerate(content):
            if not isinstance(part, Mapping):
                continue
            part_type = part.get("type")
            if part_type in IMAGE_PART_TYPES:
                kind: Literal["image", "video"] = "image"
            elif part_type in VIDEO_PART_TYPES:
                kind = "video"
            else:
                continue
            param = f"messages[{message_index}].content[{part_index}]"
            parts.append(MediaPart(kind=kind, url=_part_url(part, part_type, param), param=param))
    return parts


class MediaProcessor:
    """Loads and processes the media of chat requests with one config and one URL policy."""

    def __init__(self, config: MediaConfig | None = None, policy: MediaSourcePolicy | None = None) -> None:
        self.config = config or MediaConfig()
        self.policy = policy or MediaSourcePolicy()

    def check_count(self, parts: Sequence[MediaPart]) -> None:
        """Raise MediaError when a request has more media parts than the operator allows."""
        limit = self.config.limits.max_media_items
        if len(parts) > limit:
            raise MediaError(
                f"The request has {len(parts)} images and videos, more than this server's limit of {limit} per "
                "request; send fewer.", parts[limit].param, TOO_MANY_MEDIA_ITEMS)

    def process_part(self, part: MediaPart) -> ProcessedMedia:
        """Load one part's URL and process it as an image or a video."""
        limits = self.config.limits
        max_bytes = limits.max_image_bytes if part.kind == "image" else limits.max_video_bytes
        loaded = load_media_bytes(part.url, self.policy, max_bytes=max_bytes, param=part.param)
        if part.kind == "image":
            return process_image(loaded.data, self.config, part.param)
        return process_video(loaded.data, self.config, part.param)

    def process_messages(self, messages: Sequence[Any]) -> list[ProcessedMedia]:
        """Process every media part of `messages`, in prompt order; the count is checked before any URL is loaded."""
        parts = find_media_parts(messages)
        self.check_count(parts)
        return [self.process_part(part) for part in parts]


def _part_url(part: Mapping[str, Any], part_type: str, param: str) -> str:
    value = part.get(part_type)
    if value is None:
        value = part.get("url")
    if isinstance(value, Mapping):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        key = part_type if part_type.endswith("_url") else f"{part_type}_url"
        raise MediaError(
            f"The {part_type} part {param} has no URL; send {{\"type\": \"{key}\", \"{key}\": {{\"url\": \"data:...\"}}}}.",
            f"{param}.{part_type}", INVALID_MEDIA_PART)
    return value
