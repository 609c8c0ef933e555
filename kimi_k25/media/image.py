"""Images: decode bytes with Pillow, convert to RGB, then resize, pad and patchify."""

from __future__ import annotations

import functools
import io
import logging
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kimi_k25.chat import tokens
from kimi_k25.media.config import MediaConfig
from kimi_k25.media.errors import (
    IMAGE_TOO_LARGE,
    INVALID_IMAGE,
    MEDIA_TOO_LARGE,
    UNSUPPORTED_FORMAT,
    MediaError,
    describe_part,
)
from kimi_k25.media.items import MediaItem
from kimi_k25.media.patches import frames_to_patches, plan_resize, resize_and_pad

logger = logging.getLogger(__name__)

# Formats Pillow may decode. Leaving the rest out keeps rarely used parsers away from request
# bytes; EPS in particular would start Ghostscript. Those this Pillow build lacks (AVIF needs
# libavif; some versions read MPO through the JPEG plugin) are skipped.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO", "AVIF")

IMAGE_PROMPT = tokens.IMAGE_PROMPT

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image(data: bytes, config: MediaConfig, param: str | None = None) -> Image.Image:
    """Decode image bytes into an RGB PIL image, rotated upright by its EXIF orientation tag.

    The pixel count is checked against `config.limits.max_image_pixels` from the header, before
    the pixels are decoded. Animated images give their first frame.

    NOTE: the official processor opens images without applying the EXIF orientation, so a phone
    photo stored sideways reaches the model sideways there. transformers 5.25's `load_image`
    applies it, and so does this function.
    """
    where = describe_part(param)
    limits = config.limits
    if len(data) > limits.max_image_bytes:
        raise MediaError(
            f"The image in {where} is {len(data)} bytes, more than this server's limit of {limits.max_image_bytes} "
            "bytes; send a smaller or more compressed image.", param, MEDIA_TOO_LARGE)
    if not data:
        raise MediaError(f"The image in {where} is empty (0 bytes); send the image file's contents.", param,
                         INVALID_IMAGE)

    try:
        with warnings.catch_warnings():
            # Our own pixel limit is lower than Pillow's warning threshold, so its warning adds nothing.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_available_formats())
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(where, param, limits.max_image_pixels, str(error)) from error
    except UnidentifiedImageError as error:
        raise MediaError(
            f"The image in {where} is not in a supported format or is corrupt; send JPEG, PNG, GIF, WebP, BMP, "
            "TIFF or AVIF.", param, UNSUPPORTED_FORMAT) from error

    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise _too_many_pixels(where, param, limits.max_image_pixels, f"{width}×{height} = {width * height} pixels")

    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(where, param, limits.max_image_pixels, str(error)) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise MediaError(
            f"The image in {where} could not be decoded ({error}); the file may be truncated or corrupt.", param,
            INVALID_IMAGE) from error

    try:
        return to_rgb(image, config.alpha_background)
    except ValueError as error:
        raise MediaError(
            f"The image in {where} uses colour mode {image.mode}, which cannot be converted to RGB ({error}); "
            "send an RGB, greyscale, palette or CMYK image.", param, UNSUPPORTED_FORMAT) from error


def to_rgb(image: Image.Image, alpha_background: tuple[int, int, int] | None = None) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Alpha is dropped, as PIL's `convert("RGB")` in the official processor does, unless
    `alpha_background` gives a colour to composite onto. 16-bit greyscale is scaled to 8 bits.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        # NOTE: the official processor's convert("RGB") clips 16-bit levels at 255, which turns
        # most of a 16-bit image white. Scaling by 257 maps 0..65535 onto 0..255 instead.
        levels = np.asarray(image, dtype=np.int64)
        levels = np.clip(np.rint(levels / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(levels).convert("RGB")
    if alpha_background is not None and _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*alpha_background, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        # Go through RGBA so that Pillow does not warn about palette transparency; RGB drops alpha anyway.
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def process_image(data: bytes | Image.Image, config: MediaConfig, param: str | None = None) -> MediaItem:
    """Decode (when given bytes), resize, pad, normalize and patchify one image."""
    image = decode_image(data, config, param) if isinstance(data, bytes) else to_rgb(data, config.alpha_background)
    plan = plan_resize(image.width, image.height, config.in_patch_limit, config)
    pixel_values, grid_thw = frames_to_patches([resize_and_pad(image, plan)], config)
    logger.debug("image %s: %d×%d -> %d×%d, grid %s, %d tokens", describe_part(param), image.width, image.height,
                 plan.width, plan.height, grid_thw, plan.num_tokens)
    return MediaItem(
        kind="image",
        pixel_values=pixel_values,
        grid_thw=grid_thw,
        num_tokens=plan.num_tokens,
        prompt=IMAGE_PROMPT,
        resized_size=(plan.width, plan.height),
    )


@functools.cache
def _available_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info


def _too_many_pixels(where: str, param: str | None, limit: int, detail: str) -> MediaError:
    return MediaError(
        f"The image in {where} has too many pixels ({detail}); this server accepts at most {limit} pixels. "
        "Send a smaller image.", param, IMAGE_TOO_LARGE)
