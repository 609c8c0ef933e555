"""Media preprocessing compared with transformers' Kimi K2.5 image and video processors.

transformers' processors import torchvision, which does not import beside the torch wheel of the
main environment, so this module runs in a separate reference environment and skips elsewhere:

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers==5.25.0 pillow av numpy pytest \\
        safetensors jinja2 matplotlib scikit-image
    .venv-ref/bin/python -m pytest tests/test_media_reference.py -o log_cli=true --log-cli-level=INFO

Photographs come from scikit-image's and matplotlib's bundled sample data (each case skips when
its package is missing); drawings are made here with Pillow.

Grids and token counts must match exactly. Pixel values must match within 1e-5 where no resize
happens. Where a resize happens they differ, because transformers 5.25 resizes with torchvision's
antialiased bicubic and this package keeps the official processor's PIL BICUBIC; those cases
check the documented bounds below and log the measured difference.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable

import numpy as np
import pytest
import torch
from media_helpers import encode_image, encode_video
from PIL import Image, ImageDraw

try:
    import torchvision  # noqa: F401
    from transformers.models.kimi_k25.image_processing_kimi_k25 import Kimi_K25ImageProcessor
    from transformers.models.kimi_k25.video_processing_kimi_k25 import Kimi_K25VideoProcessor
except Exception as error:  # noqa: BLE001 - torchvision fails with RuntimeError as well as ImportError
    pytest.skip(f"transformers' Kimi K2.5 processors need an importable torchvision ({type(error).__name__}: "
                f"{error}); run this module in the reference environment described in its docstring",
                allow_module_level=True)

from kimi_k25.media import MediaConfig, plan_resize, process_image, process_video

logger = logging.getLogger(__name__)

EXACT_TOLERANCE = 1e-5
# Bounds for resized images in normalized units, where one 8-bit level is 2 / 255 ≈ 0.0078: the
# largest single difference, and the mean over all values. With torch 2.14.1, torchvision 0.29.1
# and Pillow 13.0 on an x86-64 CPU, the cases below measured at most 2 levels (0.0157) and a mean
# of at most 3.1e-5; the bounds leave room for 4 levels and three times that mean.
RESIZED_MAX_ABS = 4 * 2 / 255
RESIZED_MEAN_ABS = 1e-4


# ---------------------------------------------------------------------------------------------
# Inputs


def bundled_photo(package: str, *parts: str) -> Image.Image:
    module = pytest.importorskip(package)
    path = os.path.join(os.path.dirname(module.__file__), *parts)
    if not os.path.exists(path):
        pytest.skip(f"{package} does not ship {'/'.join(parts)}")
    with Image.open(path) as image:
        image.load()
        return image.copy()


PHOTOS: dict[str, Callable[[], Image.Image]] = {
    "astronaut": lambda: bundled_photo("skimage", "data", "astronaut.png"),
    "chelsea": lambda: bundled_photo("skimage", "data", "chelsea.png"),
    "coffee": lambda: bundled_photo("skimage", "data", "coffee.png"),
    "rocket": lambda: bundled_photo("skimage", "data", "rocket.jpg"),
    "motorcycle": lambda: bundled_photo("skimage", "data", "motorcycle_left.png"),
    "hubble": lambda: bundled_photo("skimage", "data", "hubble_deep_field.jpg"),
    "retina": lambda: bundled_photo("skimage", "data", "retina.jpg"),
    "camera_grey": lambda: bundled_photo("skimage", "data", "camera.png"),
    "grace_hopper": lambda: bundled_photo("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
}


def drawing(width: int, height: int, seed: int = 0) -> Image.Image:
    """A gradient background with shapes, lines and text, so that both smooth areas and sharp edges are tested."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    background = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                           np.broadcast_to((x + y) / 2, (height, width))], axis=-1).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(rng.integers(0, 256, 3).tolist())
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), outline=colour, width=3)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=2)
    for row in range(0, height, max(height // 6, 12)):
        draw.text((5, row), "Kimi K2.5 media 0123456789", fill=(255, 255, 255))
    return image


def transparent_drawing(width: int, height: int) -> Image.Image:
    image = drawing(width, height, seed=3).convert("RGBA")
    alpha = np.full((height, width), 255, dtype=np.uint8)
    alpha[: height // 2, : width // 2] = 0
    alpha[height // 2:, width // 2:] = 128
    image.putalpha(Image.fromarray(alpha))
    return image


DRAWINGS: dict[str, Callable[[], Image.Image]] = {
    "shapes_640x480": lambda: drawing(640, 480),
    "text_wide_1024x256": lambda: drawing(1024, 256, seed=1),
    "gradient_tall_300x1200": lambda: drawing(300, 1200, seed=2),
    "tiny_17x64": lambda: drawing(17, 64, seed=4),
    "odd_1001x333": lambda: drawing(1001, 333, seed=5),
    "large_2048x1365": lambda: drawing(2048, 1365, seed=6),
    # These are resized by the default limits: the patch budget (by about half, and by under 1 %),
    # and the 512-patch side limit.
    "huge_4000x3000": lambda: drawing(4000, 3000, seed=7),
    "near_limit_1811x1811": lambda: drawing(1811, 1811, seed=9),
    "strip_8000x120": lambda: drawing(8000, 120, seed=8),
}


# ---------------------------------------------------------------------------------------------
# Comparison


def transformers_image(image: Image.Image, config: MediaConfig) -> tuple[torch.Tensor, tuple[int, int, int]]:
    processor = Kimi_K25ImageProcessor(
        max_patches=config.in_patch_limit, patch_size=config.patch_size, merge_size=config.merge_kernel_size,
        size={"max_height": config.patch_limit_on_one_side, "max_width": config.patch_limit_on_one_side})
    output = processor(images=[image], return_tensors="pt")
    return output["pixel_values"], tuple(output["image_grid_thw"][0].tolist())


def compare_image(name: str, image: Image.Image, config: MediaConfig) -> None:
    ours = process_image(encode_image(image), config, name)
    reference_pixels, reference_grid = transformers_image(image, config)

    assert ours.grid_thw == reference_grid, name
    assert ours.num_tokens == reference_grid[1] * reference_grid[2] // config.merge_kernel_size**2, name
    assert ours.pixel_values.shape == reference_pixels.shape, name

    difference = (ours.pixel_values - reference_pixels.float()).abs()
    max_abs, mean_abs = difference.max().item(), difference.mean().item()
    resized = ours.resized_size != image.size
    logger.info("%-24s %5d×%-5d -> %5d×%-5d grid %-14s tokens %5d  max |Δ| %.3g  mean |Δ| %.3g", name, *image.size,
                *ours.resized_size, ours.grid_thw, ours.num_tokens, max_abs, mean_abs)
    if resized:
        assert max_abs <= RESIZED_MAX_ABS, f"{name}: max |Δ| {max_abs}"
        assert mean_abs <= RESIZED_MEAN_ABS, f"{name}: mean |Δ| {mean_abs}"
    else:
        assert max_abs <= EXACT_TOLERANCE, f"{name}: max |Δ| {max_abs}"


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_photo_matches_transformers(name: str) -> None:
    compare_image(name, PHOTOS[name](), MediaConfig())


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_resized_photo_close_to_transformers(name: str) -> None:
    # A budget of 512 patches forces every bundled photograph through the resize.
    config = MediaConfig(in_patch_limit=512)
    image = PHOTOS[name]()
    plan = plan_resize(image.width, image.height, config.in_patch_limit, config)
    assert (plan.width, plan.height) != image.size

    compare_image(f"{name}@512", image, config)


@pytest.mark.parametrize("name", sorted(DRAWINGS))
def test_drawing_matches_transformers(name: str) -> None:
    compare_image(name, DRAWINGS[name](), MediaConfig())


def test_transparent_drawing_matches_with_white_background() -> None:
    # transformers 5.25 composites alpha onto white; with alpha_background white this package does the same.
    compare_image("rgba_white_400x300", transparent_drawing(400, 300), MediaConfig(alpha_background=(255, 255, 255)))


def test_transparent_drawing_default_drops_alpha() -> None:
    image = transparent_drawing(400, 300)

    ours = process_image(encode_image(image), MediaConfig())
    reference_pixels, reference_grid = transformers_image(image, MediaConfig())

    difference = (ours.pixel_values - reference_pixels.float()).abs().max().item()
    logger.info("rgba_default_400x300: grid %s, max |Δ| %.3g (alpha dropped here, composited on white in "
                "transformers)", ours.grid_thw, difference)
    assert ours.grid_thw == reference_grid
    assert difference > 0.5


# ---------------------------------------------------------------------------------------------
# Video


def moving_shapes(index: int, width: int, height: int) -> np.ndarray:
    image = drawing(width, height, seed=11)
    draw = ImageDraw.Draw(image)
    x = (index * 37) % width
    draw.ellipse((x, height // 3, x + width // 8, height // 3 + height // 8), fill=(250, 30, 30))
    draw.text((10, 10), f"frame {index}", fill=(0, 0, 0))
    return np.asarray(image)


def decode_frames(data: bytes, indices: tuple[int, ...]) -> list[np.ndarray]:
    import av

    wanted = set(indices)
    frames = []
    with av.open(io.BytesIO(data)) as container:
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            if index in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
    return frames


@pytest.mark.parametrize("width, height, num_frames, fps", [(640, 360, 20, 4), (1280, 720, 12, 2)])
def test_video_chunks_match_transformers(width: int, height: int, num_frames: int, fps: int) -> None:
    data = encode_video(num_frames, width, height, fps=fps, container="mov", codec="png", frame=moving_shapes)
    config = MediaConfig()

    video = process_video(data, config, "video")
    frames = np.stack(decode_frames(data, video.frame_indices))
    processor = Kimi_K25VideoProcessor(max_patches=config.frame_patch_limit(len(video.frame_indices)))
    output = processor(videos=[frames], do_sample_frames=False, return_tensors="pt")

    reference_grids = [tuple(grid) for grid in output["video_grid_thw"].tolist()]
    assert [chunk.grid_thw for chunk in video.chunks] == reference_grids
    ours = torch.cat([chunk.pixel_values for chunk in video.chunks])
    difference = (ours - output["pixel_values_videos"].float()).abs()
    max_abs, mean_abs = difference.max().item(), difference.mean().item()
    resized = video.chunks[0].resized_size != (width, height)
    logger.info("video %d×%d, %d frames at %d fps: %d sampled, chunks %s, resized to %s, max |Δ| %.3g, mean |Δ| %.3g",
                width, height, num_frames, fps, len(video.frame_indices), reference_grids,
                video.chunks[0].resized_size, max_abs, mean_abs)
    if resized:
        assert max_abs <= RESIZED_MAX_ABS
        assert mean_abs <= RESIZED_MEAN_ABS
    else:
        assert max_abs <= EXACT_TOLERANCE
