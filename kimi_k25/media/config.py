"""Media preprocessing settings: the checkpoint's `preprocessor_config.json` plus operator limits.

Two kinds of values live here and must not be confused:

- `MediaConfig` contains model facts. They come from the checkpoint and change token counts, so
  they must match what the model was trained with. The official file nests them under
  `media_proc_cfg`; transformers writes its own spelling (`max_patches`, `merge_size`,
  `size.max_height`, and the video values in `video_preprocessor_config.json`). Both are read.
- `MediaLimits` contains operator limits. They protect the server from expensive or hostile
  inputs and never change how an accepted image or video is processed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PREPROCESSOR_CONFIG_FILENAME = "preprocessor_config.json"
VIDEO_PREPROCESSOR_CONFIG_FILENAME = "video_preprocessor_config.json"
TIMESTAMP_MODES = ("hh:mm:ss.fff", "mm:ss.fff", "mm:ss")

MIB = 1024 * 1024


class MediaConfigError(ValueError):
    """An invalid preprocessor config value; the message names the key."""


@dataclass(frozen=True)
class MediaLimits:
    """Operator limits on request media, not model facts.

    The defaults are choices for a public server, sized by cost and not taken from the checkpoint.
    Each one is checked before the expensive step it guards: pixel counts from the image header
    before decoding, video duration and frame counts from the container before decoding frames.
    """

    # 8192 × 8192. An RGBA decode of this size takes 256 MiB. Pillow's own guard
    # (Image.MAX_IMAGE_PIXELS, about 89.5 M pixels in Pillow 13) stays in place behind this one.
    max_image_pixels: int = 8192 * 8192
    max_image_bytes: int = 20 * MIB
    max_video_bytes: int = 256 * MIB
    # At 2 fps, 300 s gives 600 sampled frames in 150 chunks. At 1920×1080 that is about 155k
    # prompt tokens and 5.8 GB of float32 pixel values; at 640×360 about 45k tokens and 1.7 GB.
    max_video_seconds: float = 300.0
    # Frames decoded from the stream, not frames sampled: every frame up to the last sampled one
    # is decoded. 36,000 is 300 s at 120 fps.
    max_video_frames: int = 36_000
    # Images and videos in one request; a video counts once, whatever its number of chunks.
    max_media_items: int = 32

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise MediaConfigError(f"media limit {item.name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class MediaConfig:
    """Kimi K2.5 image and video preprocessing values, with the K2.5 checkpoint's values as defaults.

    Field names follow the official `media_proc_cfg` spelling. Limits count 14×14 patches before
    the 2×2 merge, so an image of `in_patch_limit` patches costs `in_patch_limit / 4` prompt tokens.
    """

    patch_size: int = 14
    merge_kernel_size: int = 2
    # Max patches per image; padding to a multiple of merge_kernel_size can exceed it slightly.
    in_patch_limit: int = 16384
    # Max patches along either side of an image or frame.
    patch_limit_on_one_side: int = 512
    # Max patches per video frame; None means in_patch_limit.
    in_patch_limit_each_frame: int | None = 4096
    # Max patches over all sampled frames of a video; None means no total limit.
    in_patch_limit_video: int | None = None
    # Frames sampled per second of video, capped at the video's own frame rate.
    sample_fps: float = 2.0
    # Max sampled frames per video; None means no cap.
    max_num_frames_each_video: int | None = None
    # Frames per video chunk; each chunk is one media item with grid t <= this value.
    temporal_merge_kernel_size: int = 4
    timestamp_mode: str = "hh:mm:ss.fff"
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Colour that transparent pixels are composited onto, as 8-bit RGB. None (the default) drops
    # the alpha channel the way the official processor's PIL `convert("RGB")` does, so a fully
    # transparent pixel keeps whatever colour the file stores for it. transformers 5.25 composites
    # onto white, which is (255, 255, 255) here. Not a checkpoint value.
    alpha_background: tuple[int, int, int] | None = None
    limits: MediaLimits = field(default_factory=MediaLimits)

    def __post_init__(self) -> None:
        for name in ("patch_size", "merge_kernel_size", "in_patch_limit", "patch_limit_on_one_side",
                     "temporal_merge_kernel_size"):
            _require_positive_int(name, getattr(self, name))
        for name in ("in_patch_limit_each_frame", "in_patch_limit_video", "max_num_frames_each_video"):
            value = getattr(self, name)
            if value is not None:
                _require_positive_int(name, value)
        if not isinstance(self.sample_fps, (int, float)) or not math.isfinite(self.sample_fps) or self.sample_fps <= 0:
            raise MediaConfigError(f"sample_fps must be a positive number of frames per second, got {self.sample_fps!r}")
        if self.timestamp_mode not in TIMESTAMP_MODES:
            raise MediaConfigError(
                f"timestamp_mode {self.timestamp_mode!r} is not supported; expected one of {', '.join(TIMESTAMP_MODES)}"
            )
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise MediaConfigError(f"{name} must be three numbers, one per RGB channel, got {value!r}")
        if any(v == 0 for v in self.image_std):
            raise MediaConfigError(f"image_std must not contain 0, got {self.image_std!r}")
        if self.alpha_background is not None and (
            len(self.alpha_background) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in self.alpha_background)
        ):
            raise MediaConfigError(
                f"alpha_background must be None or three integers in 0..255, got {self.alpha_background!r}"
            )

    @property
    def merged_patch_pixels(self) -> int:
        """Side in pixels of one prompt token's square (28 for K2.5): images are padded to multiples of it."""
        return self.patch_size * self.merge_kernel_size

    def frame_patch_limit(self, num_sampled_frames: int) -> int:
        """Return the patch limit for each frame of a video with this many sampled frames."""
        limit = self.in_patch_limit if self.in_patch_limit_each_frame is None else self.in_patch_limit_each_frame
        if self.in_patch_limit_video is not None:
            limit = min(round(self.in_patch_limit_video / max(num_sampled_frames, 1)), limit)
        return max(limit, 1)

    def with_limits(self, limits: MediaLimits) -> MediaConfig:
        """Return a copy with other operator limits."""
        return replace(self, limits=limits)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], video: dict[str, Any] | None = None,
                  limits: MediaLimits | None = None) -> MediaConfig:
        """Build a config from a parsed `preprocessor_config.json`.

        Accepts the official layout (values under `media_proc_cfg`), transformers' flat image
        processor layout, and transformers' processor layout with `image_processor` and
        `video_processor` sub-objects. `video` is transformers' `video_preprocessor_config.json`.
        Missing values keep the K2.5 defaults.
        """
        if not isinstance(raw, dict):
            raise MediaConfigError(f"preprocessor config must be a JSON object, got {type(raw).__name__}")
        values: dict[str, Any] = {}
        if "media_proc_cfg" in raw:
            values.update(_official_values(raw["media_proc_cfg"]))
        else:
            image_section = raw.get("image_processor", raw)
            video_section = raw.get("video_processor")
            values.update(_transformers_image_values(image_section))
            if video_section is not None:
                values.update(_transformers_video_values(video_section))
        if video is not None:
            values.update(_transformers_video_values(video))
        if limits is not None:
            values["limits"] = limits
        return cls(**values)

    @classmethod
    def from_dir(cls, checkpoint_dir: str | Path, limits: MediaLimits | None = None) -> MediaConfig:
        """Read a checkpoint directory's preprocessor config; K2.5 defaults when the file is absent."""
        directory = Path(checkpoint_dir)
        path = directory / PREPROCESSOR_CONFIG_FILENAME
        video_path = directory / VIDEO_PREPROCESSOR_CONFIG_FILENAME
        video = _read_json(video_path) if video_path.is_file() else None
        if not path.is_file():
            logger.info("%s not found in %s; using the Kimi K2.5 media defaults", PREPROCESSOR_CONFIG_FILENAME,
                        directory)
            return cls.from_dict({}, video=video, limits=limits)
        return cls.from_dict(_read_json(path), video=video, limits=limits)


_OFFICIAL_KEYS = {
    "patch_size", "merge_kernel_size", "in_patch_limit", "patch_limit_on_one_side", "in_patch_limit_each_frame",
    "in_patch_limit_video", "sample_fps", "max_num_frames_each_video", "temporal_merge_kernel_size",
    "timestamp_mode", "image_mean", "image_std",
}


def _official_values(section: Any) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise MediaConfigError(f"media_proc_cfg must be a JSON object, got {type(section).__name__}")
    fixed_tokens = section.get("fixed_output_tokens")
    if fixed_tokens is not None:
        # A fixed token count would no longer equal (h/2)·(w/2), which the vision tower produces.
        raise MediaConfigError(
            f"media_proc_cfg.fixed_output_tokens = {fixed_tokens!r} is not supported; only null works with this "
            "implementation"
        )
    values = {key: section[key] for key in _OFFICIAL_KEYS if key in section and section[key] is not None}
    for key in ("in_patch_limit_each_frame", "in_patch_limit_video", "max_num_frames_each_video"):
        if key in section and section[key] is None:
            values[key] = None
    unknown = sorted(set(section) - _OFFICIAL_KEYS - {"fixed_output_tokens", "fixed_output_tokens_each_frame"})
    if unknown:
        logger.debug("ignoring media_proc_cfg keys %s", ", ".join(unknown))
    return _as_tuples(values)


def _transformers_image_values(section: Any) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise MediaConfigError(f"image_processor must be a JSON object, got {type(section).__name__}")
    values: dict[str, Any] = {}
    if "max_patches" in section:
        values["in_patch_limit"] = section["max_patches"]
    if "patch_size" in section:
        values["patch_size"] = section["patch_size"]
    if "merge_size" in section:
        values["merge_kernel_size"] = section["merge_size"]
    side = _side_limit(section, "image_processor")
    if side is not None:
        values["patch_limit_on_one_side"] = side
    for key in ("image_mean", "image_std"):
        if key in section:
            values[key] = section[key]
    return _as_tuples(values)


def _transformers_video_values(section: Any) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise MediaConfigError(f"video_processor must be a JSON object, got {type(section).__name__}")
    values: dict[str, Any] = {}
    if "max_patches" in section:
        values["in_patch_limit_each_frame"] = section["max_patches"]
    if "fps" in section:
        values["sample_fps"] = section["fps"]
    if "temporal_patch_size" in section:
        values["temporal_merge_kernel_size"] = section["temporal_patch_size"]
    return values


def _side_limit(section: dict[str, Any], where: str) -> int | None:
    size = section.get("size")
    if size is None:
        return None
    if not isinstance(size, dict) or size.get("max_height") != size.get("max_width"):
        raise MediaConfigError(f"{where}.size must have equal max_height and max_width (patches per side), got {size!r}")
    return size.get("max_height")


def _as_tuples(values: dict[str, Any]) -> dict[str, Any]:
    for key in ("image_mean", "image_std"):
        if key in values:
            value = values[key]
            if not isinstance(value, (list, tuple)):
                raise MediaConfigError(f"{key} must be a list of three numbers, got {value!r}")
            values[key] = tuple(value)
    return values


def _require_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise MediaConfigError(f"{name} must be a positive integer, got {value!r}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MediaConfigError(f"{path} is not valid JSON: {error}") from error
