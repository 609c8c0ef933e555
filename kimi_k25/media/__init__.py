"""Images and videos of chat requests turned into vision-tower inputs and prompt tokens.

    URL ──load_media_bytes──► bytes ──process_image / process_video──► MediaItem(s)
    rendered prompt + processed media ──expand_media_prompt──► prompt text + items in token order
    items ──encode_with_cache(KimiK25Model.encode_media, MediaCache)──► (Σ tokens, D) embeddings

`MediaConfig` contains the checkpoint's preprocessing values and `MediaLimits` the operator
limits. `MediaSourcePolicy` decides which URLs may be read. Every failure is a `MediaError` with the
OpenAI-style `param` path of the content part and a `code`.
"""

from kimi_k25.media.cache import CacheStats, MediaCache, encode_with_cache
from kimi_k25.media.config import MediaConfig, MediaConfigError, MediaLimits
from kimi_k25.media.errors import MediaError
from kimi_k25.media.image import decode_image, process_image, to_rgb
from kimi_k25.media.items import GridTHW, MediaItem, ProcessedMedia, ProcessedVideo, concat_media, media_content_hash
from kimi_k25.media.patches import ResizePlan, frames_to_patches, plan_resize, resize_and_pad
from kimi_k25.media.processor import MediaPart, MediaProcessor, find_media_parts
from kimi_k25.media.prompt import ExpandedPrompt, expand_media_prompt
from kimi_k25.media.sources import LoadedMedia, MediaSourcePolicy, load_media_bytes
from kimi_k25.media.video import (
    VideoInfo,
    chunk_prompt,
    format_timestamp,
    probe_video,
    process_video,
    sample_frame_indices,
    split_chunks,
)

__all__ = [
    "CacheStats",
    "ExpandedPrompt",
    "GridTHW",
    "LoadedMedia",
    "MediaCache",
    "MediaConfig",
    "MediaConfigError",
    "MediaError",
    "MediaItem",
    "MediaLimits",
    "MediaPart",
    "MediaProcessor",
    "MediaSourcePolicy",
    "ProcessedMedia",
    "ProcessedVideo",
    "ResizePlan",
    "VideoInfo",
    "chunk_prompt",
    "concat_media",
    "decode_image",
    "encode_with_cache",
    "expand_media_prompt",
    "find_media_parts",
    "format_timestamp",
    "frames_to_patches",
    "load_media_bytes",
    "media_content_hash",
    "plan_resize",
    "probe_video",
    "process_image",
    "process_video",
    "resize_and_pad",
    "sample_frame_indices",
    "split_chunks",
    "to_rgb",
]
