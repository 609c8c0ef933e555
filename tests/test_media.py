"""Media preprocessing: resize rule, colour modes, video sampling, prompt expansion, URL policy, cache."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import (
    Route,
    data_url,
    encode_audio_only,
    encode_image,
    encode_video,
    local_http_server,
    random_rgb,
)
from PIL import Image

from kimi_k25.chat import render_chat, tokens
from kimi_k25.media import (
    MediaCache,
    MediaConfig,
    MediaConfigError,
    MediaError,
    MediaItem,
    MediaLimits,
    MediaProcessor,
    MediaSourcePolicy,
    ProcessedVideo,
    decode_image,
    encode_with_cache,
    expand_media_prompt,
    find_media_parts,
    format_timestamp,
    load_media_bytes,
    media_content_hash,
    plan_resize,
    probe_video,
    process_image,
    process_video,
    sample_frame_indices,
    split_chunks,
)
from kimi_k25.media import errors as codes
from kimi_k25.media import video as video_module

CONFIG = MediaConfig()
PART = "messages[0].content[1]"


def normalized(levels: np.ndarray) -> np.ndarray:
    """(x / 255 − 0.5) / 0.5 in float64, the K2.5 normalization computed independently."""
    return (levels.astype(np.float64) / 255.0 - 0.5) / 0.5


def config_with(**limits) -> MediaConfig:
    return MediaConfig(limits=MediaLimits(**limits))


# ---------------------------------------------------------------------------------------------
# Config


def test_config_defaults_are_k25_values() -> None:
    assert CONFIG.patch_size == 14
    assert CONFIG.merge_kernel_size == 2
    assert CONFIG.in_patch_limit == 16384
    assert CONFIG.patch_limit_on_one_side == 512
    assert CONFIG.in_patch_limit_each_frame == 4096
    assert CONFIG.in_patch_limit_video is None
    assert CONFIG.sample_fps == 2.0
    assert CONFIG.max_num_frames_each_video is None
    assert CONFIG.temporal_merge_kernel_size == 4
    assert CONFIG.timestamp_mode == "hh:mm:ss.fff"
    assert CONFIG.image_mean == (0.5, 0.5, 0.5)
    assert CONFIG.image_std == (0.5, 0.5, 0.5)
    assert CONFIG.alpha_background is None


def test_config_from_official_file(tmp_path: Path) -> None:
    official = {
        "auto_map": {"AutoProcessor": "kimi_k25_processor.KimiK25Processor"},
        "media_proc_cfg": {
            "patch_size": 14, "merge_kernel_size": 2, "in_patch_limit": 8192, "patch_limit_on_one_side": 256,
            "in_patch_limit_each_frame": 1024, "in_patch_limit_video": None, "fixed_output_tokens": None,
            "sample_fps": 1.0, "max_num_frames_each_video": None, "temporal_merge_kernel_size": 4,
            "timestamp_mode": "mm:ss.fff", "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "some_future_key": 1,
        },
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(official))

    config = MediaConfig.from_dir(tmp_path)

    assert config.in_patch_limit == 8192
    assert config.patch_limit_on_one_side == 256
    assert config.in_patch_limit_each_frame == 1024
    assert config.sample_fps == 1.0
    assert config.timestamp_mode == "mm:ss.fff"
    assert config.image_mean == (0.5, 0.5, 0.5)


def test_config_from_transformers_files(tmp_path: Path) -> None:
    image = {"image_processor_type": "Kimi_K25ImageProcessor", "max_patches": 10000, "merge_size": 2,
             "patch_size": 14, "size": {"max_height": 300, "max_width": 300}, "image_mean": [0.4, 0.5, 0.6],
             "image_std": [0.2, 0.3, 0.4], "resample": 3}
    video = {"video_processor_type": "Kimi_K25VideoProcessor", "max_patches": 2000, "fps": 3,
             "temporal_patch_size": 2}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(image))
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video))

    config = MediaConfig.from_dir(tmp_path)

    assert config.in_patch_limit == 10000
    assert config.patch_limit_on_one_side == 300
    assert config.image_mean == (0.4, 0.5, 0.6)
    assert config.image_std == (0.2, 0.3, 0.4)
    assert config.in_patch_limit_each_frame == 2000
    assert config.sample_fps == 3
    assert config.temporal_merge_kernel_size == 2


def test_config_from_transformers_processor_layout() -> None:
    raw = {"image_processor": {"max_patches": 4000}, "video_processor": {"max_patches": 500, "fps": 1}}

    config = MediaConfig.from_dict(raw)

    assert config.in_patch_limit == 4000
    assert config.in_patch_limit_each_frame == 500
    assert config.sample_fps == 1


def test_config_missing_file_uses_defaults(tmp_path: Path) -> None:
    limits = MediaLimits(max_media_items=3)

    config = MediaConfig.from_dir(tmp_path, limits=limits)

    assert config == MediaConfig(limits=limits)


@pytest.mark.parametrize("raw, key", [
    ({"media_proc_cfg": {"fixed_output_tokens": 256}}, "fixed_output_tokens"),
    ({"media_proc_cfg": {"timestamp_mode": "seconds"}}, "timestamp_mode"),
    ({"media_proc_cfg": {"image_std": [0.5, 0, 0.5]}}, "image_std"),
    ({"media_proc_cfg": {"patch_size": 0}}, "patch_size"),
    ({"media_proc_cfg": {"sample_fps": -1}}, "sample_fps"),
    ({"size": {"max_height": 512, "max_width": 256}}, "size"),
    ({"media_proc_cfg": "not an object"}, "media_proc_cfg"),
])
def test_config_invalid_values_rejected(raw: dict, key: str) -> None:
    with pytest.raises(MediaConfigError, match=key):
        MediaConfig.from_dict(raw)


def test_limits_must_be_positive() -> None:
    with pytest.raises(MediaConfigError, match="max_image_pixels"):
        MediaLimits(max_image_pixels=0)


def test_frame_patch_limit_with_video_total() -> None:
    assert CONFIG.frame_patch_limit(20) == 4096
    assert MediaConfig(in_patch_limit_video=20000).frame_patch_limit(20) == 1000
    assert MediaConfig(in_patch_limit_each_frame=None).frame_patch_limit(3) == 16384


# ---------------------------------------------------------------------------------------------
# Resize rule


@pytest.mark.parametrize("width, height, limit, resized, padded, grid_hw, num_tokens", [
    (2048, 1365, 16384, (2048, 1365), (2072, 1372), (98, 148), 3626),
    (17, 64, 16384, (17, 64), (28, 84), (6, 2), 3),
    (5000, 6000, 16384, (1637, 1964), (1652, 1988), (142, 118), 4189),
    (100, 100, 16384, (100, 100), (112, 112), (8, 8), 16),
    (224, 224, 16384, (224, 224), (224, 224), (16, 16), 64),
    (1920, 1080, 16384, (1920, 1080), (1932, 1092), (78, 138), 2691),
    (1920, 1080, 4096, (1196, 672), (1204, 672), (48, 86), 1032),
])
def test_resize_token_count_table(width, height, limit, resized, padded, grid_hw, num_tokens) -> None:
    plan = plan_resize(width, height, limit, CONFIG)

    assert (plan.width, plan.height) == resized
    assert (plan.padded_width, plan.padded_height) == padded
    assert plan.grid_hw == grid_hw
    assert plan.num_tokens == num_tokens


@pytest.mark.parametrize("width, height, resized, grid_hw", [
    (1, 1, (1, 1), (2, 2)),
    (13, 13, (13, 13), (2, 2)),
    (28, 28, (28, 28), (2, 2)),
    (29, 27, (29, 27), (2, 4)),
    # 100000 · (7168 / 100000) is 7167.999… in floating point, and the rule truncates.
    (1, 100_000, (1, 7167), (512, 2)),
    (100_000, 1, (7167, 1), (2, 512)),
    (8000, 100, (7168, 89), (8, 512)),
    (7168, 7168, (1792, 1792), (128, 128)),
    (20_000, 20_000, (1792, 1792), (128, 128)),
])
def test_resize_edge_sizes(width, height, resized, grid_hw) -> None:
    plan = plan_resize(width, height, CONFIG.in_patch_limit, CONFIG)

    assert (plan.width, plan.height) == resized
    assert plan.grid_hw == grid_hw


def test_resize_invariants_on_random_sizes() -> None:
    rng = np.random.default_rng(7)
    sizes = np.exp(rng.uniform(0, np.log(30_000), size=(500, 2))).astype(int) + 1
    side = CONFIG.patch_limit_on_one_side * CONFIG.patch_size
    for width, height in sizes.tolist():
        plan = plan_resize(width, height, CONFIG.in_patch_limit, CONFIG)
        assert plan.width <= width, (width, height)
        assert plan.height <= height, (width, height)
        assert plan.width <= side, (width, height)
        assert plan.height <= side, (width, height)
        assert plan.padded_width % 28 == 0, (width, height)
        assert plan.padded_height % 28 == 0, (width, height)
        assert 0 <= plan.padded_width - plan.width < 28, (width, height)
        assert 0 <= plan.padded_height - plan.height < 28, (width, height)


def test_resize_may_exceed_patch_limit() -> None:
    # The budget divides by floor(W / 14)·floor(H / 14), which undercounts, and padding adds more,
    # so the official rule can land a little above the limit. It does not trim, and neither does this.
    wide = plan_resize(8192, 923, CONFIG.in_patch_limit, CONFIG)
    tall = plan_resize(5000, 6000, CONFIG.in_patch_limit, CONFIG)

    assert (wide.width, wide.height) == (5377, 605)
    assert (wide.width // 14) * (wide.height // 14) == 16512
    assert tall.grid_hw[0] * tall.grid_hw[1] == 16756


def test_resize_rejects_empty_size() -> None:
    with pytest.raises(ValueError, match="0×5"):
        plan_resize(0, 5, 100, CONFIG)


# ---------------------------------------------------------------------------------------------
# Image pixels


def test_image_pixels_match_numpy_reference() -> None:
    rgb = random_rgb(60, 45, seed=1)

    item = process_image(encode_image(Image.fromarray(rgb)), CONFIG, PART)

    assert item.kind == "image"
    assert item.grid_thw == (1, 4, 6)
    assert item.num_tokens == 6
    assert item.resized_size == (60, 45)
    assert item.pixel_values.dtype == torch.float32
    assert tuple(item.pixel_values.shape) == (24, 3, 14, 14)

    padded = np.zeros((56, 84, 3), dtype=np.uint8)
    padded[:45, :60] = rgb
    expected = normalized(padded)
    for row in range(4):
        for column in range(6):
            patch = item.pixel_values[row * 6 + column].numpy()
            window = expected[row * 14:(row + 1) * 14, column * 14:(column + 1) * 14].transpose(2, 0, 1)
            np.testing.assert_allclose(patch, window, atol=1e-6, err_msg=f"patch ({row}, {column})")


def test_image_padding_is_minus_one() -> None:
    item = process_image(encode_image(Image.new("RGB", (15, 15), (255, 255, 255))), CONFIG)

    patches = item.pixel_values.numpy()
    assert item.grid_thw == (1, 2, 2)
    assert np.all(patches[0] == 1.0)
    assert np.all(patches[1][:, :, 0] == 1.0)
    assert np.all(patches[1][:, :, 1:] == -1.0)
    assert np.all(patches[3][:, 0, 0] == 1.0)
    assert np.all(patches[3][:, 1:, :] == -1.0)
    assert np.all(patches[3][:, :, 1:] == -1.0)


def test_resized_image_uses_pil_bicubic() -> None:
    config = MediaConfig(in_patch_limit=64)
    rgb = random_rgb(300, 200, seed=2)

    item = process_image(encode_image(Image.fromarray(rgb)), config)

    plan = plan_resize(300, 200, 64, config)
    assert item.resized_size == (plan.width, plan.height) == (139, 93)
    resized = np.asarray(Image.fromarray(rgb).resize((139, 93), Image.Resampling.BICUBIC))
    first_patch = item.pixel_values[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(first_patch, normalized(resized[:14, :14]), atol=1e-6)


def test_image_accepts_pil_image() -> None:
    item = process_image(Image.new("L", (30, 30), 128), CONFIG)

    assert item.grid_thw == (1, 4, 4)
    assert item.pixel_values[0, :, 0, 0].tolist() == pytest.approx([128 / 127.5 - 1] * 3, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Colour modes and EXIF


def decoded_pixels(data: bytes, config: MediaConfig = CONFIG) -> np.ndarray:
    return np.asarray(decode_image(data, config, PART))


def test_greyscale_becomes_equal_channels() -> None:
    pixels = decoded_pixels(encode_image(Image.new("L", (3, 2), 77)))

    assert pixels.shape == (2, 3, 3)
    assert np.all(pixels == 77)


def test_one_bit_image_becomes_black_and_white() -> None:
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)

    pixels = decoded_pixels(encode_image(image))

    assert pixels[0, 0].tolist() == [0, 0, 0]
    assert pixels[0, 1].tolist() == [255, 255, 255]


def palette_image(transparent_index: int | None) -> bytes:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0, 0, 0] * 254)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    options = {} if transparent_index is None else {"transparency": transparent_index}
    return encode_image(image, **options)


def test_palette_image_uses_palette_colours() -> None:
    pixels = decoded_pixels(palette_image(None))

    assert pixels[0].tolist() == [[10, 20, 30], [200, 100, 50]]


def test_palette_transparency_dropped_by_default() -> None:
    pixels = decoded_pixels(palette_image(0))

    assert pixels[0].tolist() == [[10, 20, 30], [200, 100, 50]]


def test_palette_transparency_composited_when_configured() -> None:
    pixels = decoded_pixels(palette_image(0), MediaConfig(alpha_background=(255, 255, 255)))

    assert pixels[0].tolist() == [[255, 255, 255], [200, 100, 50]]


def rgba_image() -> bytes:
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255], [100, 100, 100, 128]]], dtype=np.uint8)
    return encode_image(Image.fromarray(rgba, "RGBA"))


def test_alpha_dropped_by_default() -> None:
    pixels = decoded_pixels(rgba_image())

    assert pixels[0].tolist() == [[10, 20, 30], [200, 100, 50], [100, 100, 100]]


def test_alpha_composited_on_configured_background() -> None:
    pixels = decoded_pixels(rgba_image(), MediaConfig(alpha_background=(255, 255, 255)))

    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 1].tolist() == [200, 100, 50]
    # 100·128/255 + 255·127/255 ≈ 177.2
    assert np.all(np.abs(pixels[0, 2].astype(int) - 177) <= 1)


def test_greyscale_alpha_dropped_by_default() -> None:
    la = Image.fromarray(np.array([[[90, 0], [40, 255]]], dtype=np.uint8), "LA")

    pixels = decoded_pixels(encode_image(la))

    assert pixels[0].tolist() == [[90, 90, 90], [40, 40, 40]]


def test_cmyk_converted_to_rgb() -> None:
    image = Image.new("CMYK", (2, 2), (0, 255, 255, 0))

    pixels = decoded_pixels(encode_image(image, format="TIFF"))

    assert pixels[0, 0].tolist() == [255, 0, 0]


def test_cmyk_jpeg_converted_to_rgb() -> None:
    image = Image.new("CMYK", (16, 16), (255, 0, 255, 0))

    pixels = decoded_pixels(encode_image(image, format="JPEG", quality=95))

    red, green, blue = pixels[8, 8].astype(int).tolist()
    assert green > 200
    assert red < 50
    assert blue < 50


def test_sixteen_bit_greyscale_scaled_to_eight_bits() -> None:
    levels = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    data = encode_image(Image.fromarray(levels))

    pixels = decoded_pixels(data)

    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.all(pixels[..., 0] == pixels[..., 2])


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_exif_orientation_applied(format: str) -> None:
    # 40×20: left half red, right half blue. Orientation 6 means "rotate 90° clockwise to display",
    # so the upright image is 20×40 with red on top.
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[:, :20] = (255, 0, 0)
    rgb[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode_image(Image.fromarray(rgb), format=format, exif=exif, **({"quality": 95} if format == "JPEG" else {}))

    pixels = decoded_pixels(data)

    assert pixels.shape == (40, 20, 3)
    assert pixels[5, 10, 0] > 200
    assert pixels[5, 10, 2] < 60
    assert pixels[35, 10, 2] > 200
    assert pixels[35, 10, 0] < 60


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("P", (4, 4), 1), Image.new("P", (4, 4), 2)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0, 0, 0] * 253)
    data = encode_image(frames[0], format="GIF", save_all=True, append_images=frames[1:])

    pixels = decoded_pixels(data)

    assert pixels[0, 0].tolist() == [255, 0, 0]


# ---------------------------------------------------------------------------------------------
# Image errors


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height RGB pixels, followed by a few bytes of garbage data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"garbage") + chunk(b"IEND", b"")


def test_image_pixel_limit_checked_before_decoding() -> None:
    # 9000×9000 = 81 M pixels is under Pillow's own 89.5 M warning level, so only our check stops it.
    with pytest.raises(MediaError) as caught:
        decode_image(png_header_only(9000, 9000), CONFIG, PART)

    assert caught.value.code == codes.IMAGE_TOO_LARGE
    assert caught.value.param == PART
    assert PART in caught.value.message
    assert "81000000" in caught.value.message
    assert str(CONFIG.limits.max_image_pixels) in caught.value.message


def test_image_within_pixel_limit_reaches_decoder() -> None:
    with pytest.raises(MediaError) as caught:
        decode_image(png_header_only(9000, 9000), config_with(max_image_pixels=100_000_000), PART)

    assert caught.value.code == codes.INVALID_IMAGE


def test_decompression_bomb_rejected_even_with_high_limit() -> None:
    with pytest.raises(MediaError) as caught:
        decode_image(png_header_only(30_000, 30_000), config_with(max_image_pixels=10**10), PART)

    assert caught.value.code == codes.IMAGE_TOO_LARGE


@pytest.mark.parametrize("data, code", [
    (b"", codes.INVALID_IMAGE),
    (b"this is not an image at all", codes.UNSUPPORTED_FORMAT),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", codes.UNSUPPORTED_FORMAT),
])
def test_image_invalid_bytes_rejected(data: bytes, code: str) -> None:
    with pytest.raises(MediaError) as caught:
        decode_image(data, CONFIG, PART)

    assert caught.value.code == code
    assert PART in caught.value.message


def test_truncated_image_rejected() -> None:
    data = encode_image(Image.fromarray(random_rgb(64, 64)))

    with pytest.raises(MediaError) as caught:
        decode_image(data[: len(data) // 2], CONFIG, PART)

    assert caught.value.code == codes.INVALID_IMAGE
    assert "truncated or corrupt" in caught.value.message


def test_image_byte_limit() -> None:
    data = encode_image(Image.fromarray(random_rgb(64, 64)))

    with pytest.raises(MediaError) as caught:
        decode_image(data, config_with(max_image_bytes=1000), PART)

    assert caught.value.code == codes.MEDIA_TOO_LARGE
    assert "1000 bytes" in caught.value.message


# ---------------------------------------------------------------------------------------------
# Video


@pytest.fixture(scope="module")
def ten_second_clip() -> bytes:
    """10 s at 30 fps, 640×360, H.264 in MP4."""
    return encode_video(300, 640, 360, fps=30)


def test_video_worked_example(ten_second_clip: bytes) -> None:
    video = process_video(ten_second_clip, CONFIG, PART)

    assert video.fps == 30.0
    assert video.num_frames == 300
    assert video.frame_indices == (0, 16, 31, 47, 63, 79, 94, 110, 126, 142, 157, 173, 189, 205, 220, 236, 252, 268,
                                   283, 299)
    assert [chunk.frame_indices[0] for chunk in video.chunks] == [0, 63, 126, 189, 252]
    assert [chunk.prompt[:12] for chunk in video.chunks] == [
        "00:00:00.000", "00:00:02.100", "00:00:04.200", "00:00:06.299", "00:00:08.400"]
    assert [chunk.grid_thw for chunk in video.chunks] == [(4, 26, 46)] * 5
    assert [chunk.num_tokens for chunk in video.chunks] == [299] * 5
    assert all(tuple(chunk.pixel_values.shape) == (4 * 26 * 46, 3, 14, 14) for chunk in video.chunks)


def test_video_worked_example_prompt(ten_second_clip: bytes) -> None:
    video = process_video(ten_second_clip, CONFIG, PART)

    expanded = expand_media_prompt(tokens.VIDEO_PLACEHOLDER + "\n", [video])

    chunk = "<|media_begin|>video<|media_content|>" + "<|media_pad|>" * 299 + "<|media_end|>"
    timestamps = ["00:00:00.000", "00:00:02.100", "00:00:04.200", "00:00:06.299", "00:00:08.400"]
    assert expanded.text == "".join(stamp + chunk for stamp in timestamps) + "\n"
    assert expanded.items == video.chunks
    assert expanded.num_media_tokens == 5 * 299


def test_video_probe_reads_header(ten_second_clip: bytes) -> None:
    info = probe_video(ten_second_clip, CONFIG, PART)

    assert (info.width, info.height) == (640, 360)
    assert info.fps == 30.0
    assert info.num_frames == 300
    assert info.duration == pytest.approx(10.0, abs=0.05)


@pytest.fixture(scope="module")
def lossless_clip() -> bytes:
    """30 frames at 10 fps, 64×48, lossless PNG frames in MOV; frame i has red level i."""
    return encode_video(30, 64, 48, fps=10, container="mov", codec="png")


def test_video_sampled_frames_are_the_right_ones(lossless_clip: bytes) -> None:
    video = process_video(lossless_clip, CONFIG, PART)

    assert video.frame_indices == (0, 6, 12, 17, 23, 29)
    assert [chunk.frame_indices for chunk in video.chunks] == [(0, 6, 12, 17), (23, 29)]
    assert [chunk.grid_thw for chunk in video.chunks] == [(4, 4, 6), (2, 4, 6)]
    for chunk in video.chunks:
        frame_patches = 4 * 6
        for position, index in enumerate(chunk.frame_indices):
            top_left = chunk.pixel_values[position * frame_patches, :, 0, 0].numpy()
            np.testing.assert_allclose(top_left, normalized(np.array([index, 0, 200])), atol=1e-6,
                                       err_msg=f"frame {index}")


def test_video_last_chunk_prompt_and_timestamp(lossless_clip: bytes) -> None:
    video = process_video(lossless_clip, CONFIG, PART)

    last = video.chunks[-1]
    assert last.timestamp == pytest.approx(2.3)
    assert last.prompt == "00:00:02.299<|media_begin|>video<|media_content|><|media_pad|><|media_end|>"
    assert last.num_tokens == 6
    assert video.num_tokens == 12


def test_video_webm_vp9() -> None:
    data = encode_video(25, 64, 48, fps=25, container="webm", codec="libvpx-vp9")

    video = process_video(data, CONFIG, PART)

    assert video.frame_indices == (0, 24)
    assert [chunk.grid_thw for chunk in video.chunks] == [(2, 4, 6)]


def test_video_slower_than_sample_rate_keeps_every_frame() -> None:
    data = encode_video(5, 32, 32, fps=1, container="mov", codec="png")

    video = process_video(data, CONFIG, PART)

    assert video.frame_indices == (0, 1, 2, 3, 4)
    assert [chunk.prompt[:12] for chunk in video.chunks] == ["00:00:00.000", "00:00:04.000"]


def test_video_frames_use_per_frame_limit() -> None:
    data = encode_video(4, 320, 240, fps=2, container="mov", codec="png")
    config = MediaConfig(in_patch_limit_each_frame=64)

    video = process_video(data, config, PART)

    plan = plan_resize(320, 240, 64, config)
    assert video.chunks[0].resized_size == (plan.width, plan.height)
    assert video.chunks[0].grid_thw == (4, *plan.grid_hw)
    assert plan.grid_hw == (8, 10)


def test_sample_frame_indices_rule() -> None:
    assert sample_frame_indices(300, 30.0, CONFIG)[:6] == [0, 16, 31, 47, 63, 79]
    assert sample_frame_indices(1, 30.0, CONFIG) == [0]
    assert sample_frame_indices(10, 30.0, CONFIG) == [0]
    assert sample_frame_indices(3, 0.5, CONFIG) == [0, 1, 2]
    assert sample_frame_indices(300, 30.0, MediaConfig(max_num_frames_each_video=3)) == [0, 150, 299]


def test_split_chunks_last_may_be_short() -> None:
    assert split_chunks(list(range(9)), CONFIG) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert split_chunks([5], CONFIG) == [[5]]


@pytest.mark.parametrize("seconds, mode, text", [
    (0.0, "hh:mm:ss.fff", "00:00:00.000"),
    (6.3, "hh:mm:ss.fff", "00:00:06.299"),
    (2.1, "hh:mm:ss.fff", "00:00:02.100"),
    (3661.5, "hh:mm:ss.fff", "01:01:01.500"),
    (3661.5, "mm:ss.fff", "01:01.500"),
    (3661.5, "mm:ss", "01:01"),
])
def test_format_timestamp(seconds: float, mode: str, text: str) -> None:
    assert format_timestamp(seconds, mode) == text


def fail_if_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("frames were decoded although a limit should have stopped the video first")

    monkeypatch.setattr(video_module, "_decode_frames", refuse)


def test_video_duration_limit_before_decoding(ten_second_clip: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_if_decoded(monkeypatch)

    with pytest.raises(MediaError) as caught:
        process_video(ten_second_clip, config_with(max_video_seconds=5), PART)

    assert caught.value.code == codes.VIDEO_TOO_LONG
    assert "10.0 s" in caught.value.message
    assert "5 s" in caught.value.message
    assert PART in caught.value.message


def test_video_frame_limit_before_decoding(ten_second_clip: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_if_decoded(monkeypatch)

    with pytest.raises(MediaError) as caught:
        process_video(ten_second_clip, config_with(max_video_frames=100), PART)

    assert caught.value.code == codes.TOO_MANY_FRAMES
    assert "100 frames" in caught.value.message


def test_video_decoding_stops_at_frame_limit(lossless_clip: bytes) -> None:
    frames = video_module._decode_frames(lossless_clip, config_with(max_video_frames=10), "the clip", PART)
    seen = []

    with pytest.raises(MediaError) as caught:
        for index, _ in frames:
            seen.append(index)

    assert caught.value.code == codes.TOO_MANY_FRAMES
    assert seen == list(range(10))


def test_video_frame_pixel_limit(lossless_clip: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_if_decoded(monkeypatch)

    with pytest.raises(MediaError) as caught:
        process_video(lossless_clip, config_with(max_image_pixels=1000), PART)

    assert caught.value.code == codes.IMAGE_TOO_LARGE
    assert "64×48" in caught.value.message


def test_video_byte_limit(lossless_clip: bytes) -> None:
    with pytest.raises(MediaError) as caught:
        process_video(lossless_clip, config_with(max_video_bytes=100), PART)

    assert caught.value.code == codes.MEDIA_TOO_LARGE


@pytest.mark.parametrize("data, text", [
    (b"", "empty"),
    (b"definitely not a video container" * 10, "not in a supported format"),
])
def test_video_invalid_bytes_rejected(data: bytes, text: str) -> None:
    with pytest.raises(MediaError) as caught:
        process_video(data, CONFIG, PART)

    assert caught.value.code == codes.INVALID_VIDEO
    assert text in caught.value.message


def test_audio_only_file_rejected_as_video() -> None:
    with pytest.raises(MediaError) as caught:
        process_video(encode_audio_only(), CONFIG, PART)

    assert caught.value.code == codes.INVALID_VIDEO
    assert "no video stream" in caught.value.message


def test_video_resampled_when_fewer_frames_decode(lossless_clip: bytes, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    real_probe = video_module.probe_video

    def probe_with_extra_packets(data, config, param=None):
        info = real_probe(data, config, param)
        return video_module.VideoInfo(info.width, info.height, info.fps, info.num_frames + 10, info.duration)

    monkeypatch.setattr(video_module, "probe_video", probe_with_extra_packets)
    with caplog.at_level(logging.WARNING, logger="kimi_k25.media.video"):
        video = process_video(lossless_clip, CONFIG, PART)

    assert video.num_frames == 30
    assert video.frame_indices == (0, 6, 12, 17, 23, 29)
    assert "40 packets but 30 decodable frames" in caplog.text


# ---------------------------------------------------------------------------------------------
# Prompt expansion


def fake_image(num_tokens: int, grid: tuple[int, int, int] = (1, 2, 2)) -> MediaItem:
    return MediaItem(kind="image", pixel_values=torch.zeros(grid[0] * grid[1] * grid[2], 3, 14, 14), grid_thw=grid,
                     num_tokens=num_tokens, prompt=tokens.IMAGE_PROMPT, resized_size=(28, 28))


def fake_video(*chunk_tokens: int) -> ProcessedVideo:
    chunks = tuple(
        MediaItem(kind="video_chunk", pixel_values=torch.zeros(4, 3, 14, 14), grid_thw=(1, 2, 2), num_tokens=count,
                  prompt=f"00:00:0{i}.000" + video_module.VIDEO_CHUNK_PROMPT, resized_size=(28, 28), timestamp=float(i),
                  frame_indices=(i,))
        for i, count in enumerate(chunk_tokens))
    return ProcessedVideo(chunks=chunks, fps=1.0, num_frames=len(chunks), frame_indices=tuple(range(len(chunks))),
                          width=28, height=28)


def test_expand_images_and_video_in_order() -> None:
    first, video, second = fake_image(2), fake_video(1, 3), fake_image(4)
    prompt = ("A" + tokens.IMAGE_PROMPT + "\nB" + tokens.VIDEO_PLACEHOLDER + "\nC" + tokens.IMAGE_PROMPT + "\n")

    expanded = expand_media_prompt(prompt, [first, video, second])

    pad = tokens.MEDIA_PAD
    image = tokens.MEDIA_BEGIN + "image" + tokens.MEDIA_CONTENT + "{}" + tokens.MEDIA_END
    chunk = tokens.MEDIA_BEGIN + "video" + tokens.MEDIA_CONTENT + "{}" + tokens.MEDIA_END
    assert expanded.text == ("A" + image.format(pad * 2) + "\nB" + "00:00:00.000" + chunk.format(pad)
                             + "00:00:01.000" + chunk.format(pad * 3) + "\nC" + image.format(pad * 4) + "\n")
    assert expanded.items == (first, *video.chunks, second)
    assert expanded.text.count(pad) == expanded.num_media_tokens == 10


def test_expand_without_media_keeps_text() -> None:
    expanded = expand_media_prompt("plain text", [])

    assert expanded.text == "plain text"
    assert expanded.items == ()


def test_expand_count_mismatch_rejected() -> None:
    with pytest.raises(MediaError) as caught:
        expand_media_prompt(tokens.IMAGE_PROMPT + tokens.IMAGE_PROMPT, [fake_image(1)])

    assert caught.value.code == codes.PLACEHOLDER_MISMATCH
    assert "2 image and 0 video placeholders but 1 images and 0 videos" in caught.value.message


def test_expand_kind_order_mismatch_rejected() -> None:
    prompt = tokens.VIDEO_PLACEHOLDER + tokens.IMAGE_PROMPT

    with pytest.raises(MediaError) as caught:
        expand_media_prompt(prompt, [fake_image(1), fake_video(1)])

    assert caught.value.code == codes.PLACEHOLDER_MISMATCH
    assert "placeholder 0 of the prompt is for a video but media item 0 is an image" in caught.value.message


# ---------------------------------------------------------------------------------------------
# URL sources


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail the test if any code looks up a host or opens a connection; returns the attempts made."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"a network connection was attempted: {args!r}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def expect_media_error(code: str, url: str, policy: MediaSourcePolicy, **kwargs) -> MediaError:
    with pytest.raises(MediaError) as caught:
        load_media_bytes(url, policy, param=PART, **kwargs)
    assert caught.value.code == code, caught.value.message
    assert caught.value.param == PART
    assert PART in caught.value.message
    return caught.value


def test_data_url_base64() -> None:
    payload = encode_image(Image.new("RGB", (2, 2)))

    loaded = load_media_bytes(data_url(payload, "image/png"), MediaSourcePolicy())

    assert loaded.data == payload
    assert loaded.mime_type == "image/png"
    assert loaded.source == "data"


def test_data_url_with_line_breaks_and_missing_padding() -> None:
    url = data_url(b"abcd", "image/webp")
    body = url.split(",", 1)[1].rstrip("=")

    loaded = load_media_bytes("data:image/webp;base64," + body[:3] + "\n" + body[3:], MediaSourcePolicy())

    assert loaded.data == b"abcd"


def test_data_url_percent_encoded() -> None:
    loaded = load_media_bytes("data:text/plain,hello%20world", MediaSourcePolicy())

    assert loaded.data == b"hello world"
    assert loaded.mime_type == "text/plain"


def test_data_url_urlsafe_alphabet() -> None:
    loaded = load_media_bytes("data:image/png;base64,-_-_", MediaSourcePolicy())

    assert loaded.data == b"\xfb\xff\xbf"


@pytest.mark.parametrize("url", ["data:image/png;base64", "data:image/png;base64,@@@@",
                                 "data:image/png;base64,ab!c"])
def test_data_url_invalid(url: str) -> None:
    expect_media_error(codes.INVALID_URL, url, MediaSourcePolicy())


def test_data_url_too_large_before_decoding() -> None:
    error = expect_media_error(codes.MEDIA_TOO_LARGE, data_url(b"x" * 3000), MediaSourcePolicy(), max_bytes=1000)

    assert "1000 bytes" in error.message


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/image.png",
    "gopher://127.0.0.1/image.png",
    "s3://bucket/image.png",
    "javascript:alert(1)",
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==",
])
def test_unsupported_schemes_rejected(url: str, no_connections: list) -> None:
    policy = MediaSourcePolicy(allowed_media_domains={"127.0.0.1"})

    expect_media_error(codes.UNSUPPORTED_URL_SCHEME, url, policy)

    assert no_connections == []


def test_remote_url_without_allow_list_rejected(no_connections: list) -> None:
    error = expect_media_error(codes.REMOTE_MEDIA_DISABLED, "https://images.example.invalid/cat.png",
                               MediaSourcePolicy())

    assert "--allowed-media-domains" in error.message
    assert no_connections == []


def test_remote_host_not_on_list_rejected(no_connections: list) -> None:
    policy = MediaSourcePolicy(allowed_media_domains={"images.example.invalid"})

    for url in ("http://other.example.invalid/cat.png", "http://images.example.invalid.evil.invalid/cat.png",
                "http://sub.images.example.invalid/cat.png"):
        expect_media_error(codes.DOMAIN_NOT_ALLOWED, url, policy)

    assert no_connections == []


def test_url_with_credentials_rejected(no_connections: list) -> None:
    policy = MediaSourcePolicy(allowed_media_domains={"127.0.0.1"})

    expect_media_error(codes.INVALID_URL, "http://user:secret@127.0.0.1:9/cat.png", policy)
    expect_media_error(codes.INVALID_URL, "http://user@127.0.0.1:9/cat.png", policy)

    assert no_connections == []


def test_url_with_invalid_port_rejected(no_connections: list) -> None:
    policy = MediaSourcePolicy(allowed_media_domains={"127.0.0.1"})

    expect_media_error(codes.INVALID_URL, "http://127.0.0.1:99999999/cat.png", policy)

    assert no_connections == []


def test_policy_normalizes_domains() -> None:
    policy = MediaSourcePolicy.from_options(allowed_media_domains="Images.Example.Invalid., 127.0.0.1")

    assert policy.allowed_media_domains == frozenset({"images.example.invalid", "127.0.0.1"})


@pytest.mark.parametrize("domain", ["*.example.invalid", "http://example.invalid", "example.invalid/path", ""])
def test_policy_rejects_malformed_domains(domain: str) -> None:
    with pytest.raises(ValueError, match="invalid media domain"):
        MediaSourcePolicy(allowed_media_domains={domain})


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "cat.png").write_bytes(b"cat bytes")
    (allowed / "sub").mkdir()
    (allowed / "sub" / "dog.png").write_bytes(b"dog bytes")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    return allowed


def test_file_url_rejected_when_not_configured(media_dir: Path) -> None:
    error = expect_media_error(codes.LOCAL_MEDIA_DISABLED, (media_dir / "cat.png").as_uri(), MediaSourcePolicy())

    assert "--allowed-local-media-path" in error.message


def test_file_url_inside_allowed_directory(media_dir: Path) -> None:
    policy = MediaSourcePolicy(allowed_local_media_path=media_dir)

    assert load_media_bytes((media_dir / "cat.png").as_uri(), policy).data == b"cat bytes"
    assert load_media_bytes((media_dir / "sub" / "dog.png").as_uri(), policy).data == b"dog bytes"
    assert load_media_bytes("file://localhost" + str(media_dir / "cat.png"), policy).data == b"cat bytes"


def test_file_url_dot_dot_escape_rejected(media_dir: Path) -> None:
    policy = MediaSourcePolicy(allowed_local_media_path=media_dir)

    error = expect_media_error(codes.PATH_NOT_ALLOWED, f"file://{media_dir}/sub/../../secret.txt", policy)
    assert "outside the directory" in error.message
    expect_media_error(codes.PATH_NOT_ALLOWED, f"file://{media_dir}/%2E%2E/secret.txt", policy)


def test_file_url_symlink_escape_rejected(media_dir: Path) -> None:
    (media_dir / "link.txt").symlink_to(media_dir.parent / "secret.txt")
    (media_dir / "linked_dir").symlink_to(media_dir.parent)
    policy = MediaSourcePolicy(allowed_local_media_path=media_dir)

    expect_media_error(codes.PATH_NOT_ALLOWED, (media_dir / "link.txt").as_uri(), policy)
    expect_media_error(codes.PATH_NOT_ALLOWED, (media_dir / "linked_dir" / "secret.txt").as_uri(), policy)


def test_file_url_symlink_inside_directory_allowed(media_dir: Path) -> None:
    (media_dir / "alias.png").symlink_to(media_dir / "cat.png")
    policy = MediaSourcePolicy(allowed_local_media_path=media_dir)

    assert load_media_bytes((media_dir / "alias.png").as_uri(), policy).data == b"cat bytes"


def test_file_url_errors(media_dir: Path) -> None:
    policy = MediaSourcePolicy(allowed_local_media_path=media_dir)

    expect_media_error(codes.MEDIA_NOT_FOUND, (media_dir / "missing.png").as_uri(), policy)
    expect_media_error(codes.MEDIA_NOT_FOUND, (media_dir / "sub").as_uri(), policy)
    expect_media_error(codes.INVALID_URL, "file://fileserver/share/cat.png", policy)
    expect_media_error(codes.MEDIA_TOO_LARGE, (media_dir / "cat.png").as_uri(), policy, max_bytes=4)
    expect_media_error(codes.MEDIA_NOT_FOUND, f"file://{media_dir}/cat%00.png", policy)
    expect_media_error(codes.INVALID_URL, "file:relative/cat.png", policy)


def test_file_url_fifo_rejected_without_blocking(media_dir: Path) -> None:
    fifo = media_dir / "pipe"
    os.mkfifo(fifo)
    policy = MediaSourcePolicy(allowed_local_media_path=media_dir)

    expect_media_error(codes.MEDIA_NOT_FOUND, fifo.as_uri(), policy)


PNG_BYTES = encode_image(Image.new("RGB", (4, 4), (1, 2, 3)))


def local_policy(**kwargs) -> MediaSourcePolicy:
    return MediaSourcePolicy(allowed_media_domains={"127.0.0.1"}, **kwargs)


def test_http_download_from_allowed_host() -> None:
    routes = {"/cat.png": Route(body=PNG_BYTES, headers={"Content-Type": "image/png; charset=binary"})}
    with local_http_server(routes) as server:
        loaded = load_media_bytes(f"{server.base_url}/cat.png", local_policy(), param=PART)

    assert loaded.data == PNG_BYTES
    assert loaded.mime_type == "image/png"
    assert loaded.source == "http"
    assert server.requests == ["/cat.png"]


def test_http_chunked_download() -> None:
    routes = {"/cat.png": Route(body=PNG_BYTES, chunked=True, drip_bytes=7)}
    with local_http_server(routes) as server:
        loaded = load_media_bytes(f"{server.base_url}/cat.png", local_policy())

    assert loaded.data == PNG_BYTES


def test_http_error_status() -> None:
    with local_http_server({}) as server:
        error = expect_media_error(codes.DOWNLOAD_FAILED, f"{server.base_url}/missing.png", local_policy())

    assert "HTTP 404" in error.message


def test_http_redirect_within_allowed_host() -> None:
    routes = {"/old.png": Route(status=302, headers={"Location": "/cat.png"}), "/cat.png": Route(body=PNG_BYTES)}
    with local_http_server(routes) as server:
        loaded = load_media_bytes(f"{server.base_url}/old.png", local_policy())

    assert loaded.data == PNG_BYTES
    assert server.requests == ["/old.png", "/cat.png"]


def test_http_redirect_to_other_host_rejected() -> None:
    routes = {"/old.png": Route(status=301)}
    with local_http_server(routes) as server:
        # "localhost" is the same server under a host name that is not on the list.
        routes["/old.png"].headers["Location"] = f"http://localhost:{server.port}/cat.png"
        expect_media_error(codes.DOMAIN_NOT_ALLOWED, f"{server.base_url}/old.png", local_policy())

    assert server.requests == ["/old.png"]


@pytest.mark.parametrize("location", ["file:///etc/hostname", "ftp://127.0.0.1/cat.png", "data:image/png;base64,AAAA"])
def test_http_redirect_to_other_scheme_rejected(location: str) -> None:
    routes = {"/old.png": Route(status=307, headers={"Location": location})}
    with local_http_server(routes) as server:
        expect_media_error(codes.UNSUPPORTED_URL_SCHEME, f"{server.base_url}/old.png", local_policy())

    assert server.requests == ["/old.png"]


def test_http_too_many_redirects() -> None:
    routes = {"/loop": Route(status=302, headers={"Location": "/loop"})}
    with local_http_server(routes) as server:
        error = expect_media_error(codes.DOWNLOAD_FAILED, f"{server.base_url}/loop", local_policy(max_redirects=2))

    assert "more than 2 redirects" in error.message
    assert len(server.requests) == 3


def test_http_content_length_over_cap_rejected_before_body() -> None:
    routes = {"/big.png": Route(body=b"x" * 5000)}
    with local_http_server(routes) as server:
        error = expect_media_error(codes.MEDIA_TOO_LARGE, f"{server.base_url}/big.png", local_policy(),
                                   max_bytes=1000)

    assert "5000 bytes" in error.message


def test_http_stream_over_cap_rejected_while_reading() -> None:
    routes = {"/big.png": Route(body=b"x" * 200_000, chunked=True, drip_bytes=10_000)}
    with local_http_server(routes) as server:
        error = expect_media_error(codes.MEDIA_TOO_LARGE, f"{server.base_url}/big.png", local_policy(),
                                   max_bytes=50_000)

    assert "more than 50000 bytes" in error.message


def test_http_slow_server_times_out() -> None:
    routes = {"/slow.png": Route(body=b"x" * 200, drip_bytes=1, drip_delay_s=0.05)}
    with local_http_server(routes) as server:
        start = time.monotonic()
        error = expect_media_error(codes.DOWNLOAD_TIMEOUT, f"{server.base_url}/slow.png",
                                   local_policy(fetch_timeout_s=0.5))
        elapsed = time.monotonic() - start

    assert elapsed < 3.0
    assert "timed out after 0.5 s" in error.message


# ---------------------------------------------------------------------------------------------
# Request media parts


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_find_media_parts_in_prompt_order() -> None:
    messages = [
        {"role": "system", "content": "plain"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, image_part("u1"),
                                     {"type": "video_url", "video_url": {"url": "u2"}}]},
        {"role": "user", "content": [{"type": "image", "image": "u3"}, {"type": "video", "url": "u4"},
                                     {"type": "image_url", "image_url": "u5"}]},
    ]

    parts = find_media_parts(messages)

    assert [(p.kind, p.url, p.param) for p in parts] == [
        ("image", "u1", "messages[1].content[1]"),
        ("video", "u2", "messages[1].content[2]"),
        ("image", "u3", "messages[2].content[0]"),
        ("video", "u4", "messages[2].content[1]"),
        ("image", "u5", "messages[2].content[2]"),
    ]


def test_find_media_parts_missing_url() -> None:
    with pytest.raises(MediaError) as caught:
        find_media_parts([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])

    assert caught.value.code == codes.INVALID_MEDIA_PART
    assert caught.value.param == "messages[0].content[0].image_url"


def test_too_many_media_items_rejected_before_loading(no_connections: list) -> None:
    processor = MediaProcessor(config_with(max_media_items=2))
    messages = [{"role": "user", "content": [image_part(f"file:///nowhere/{i}.png") for i in range(3)]}]

    with pytest.raises(MediaError) as caught:
        processor.process_messages(messages)

    assert caught.value.code == codes.TOO_MANY_MEDIA_ITEMS
    assert caught.value.param == "messages[0].content[2]"
    assert "3 images and videos" in caught.value.message
    assert "limit of 2" in caught.value.message


def test_processor_end_to_end_with_rendered_prompt(lossless_clip: bytes) -> None:
    image = encode_image(Image.fromarray(random_rgb(60, 45)))
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Compare "},
        image_part(data_url(image)),
        {"type": "video_url", "video_url": {"url": data_url(lossless_clip, "video/quicktime")}},
        {"type": "text", "text": "What changed?"},
    ]}]
    prompt = render_chat(messages, thinking=False)

    media = MediaProcessor().process_messages(messages)
    expanded = expand_media_prompt(prompt, media)

    assert isinstance(media[1], ProcessedVideo)
    assert [item.kind for item in expanded.items] == ["image", "video_chunk", "video_chunk"]
    assert expanded.text.count(tokens.MEDIA_PAD) == 6 + 6 + 6
    assert tokens.VIDEO_PLACEHOLDER not in expanded.text
    assert "<|media_end|>\n00:00:00.000<|media_begin|>video" in expanded.text
    assert "00:00:02.299<|media_begin|>video" in expanded.text
    assert expanded.text.endswith("<|media_end|>\nWhat changed?<|im_end|><|im_assistant|>assistant<|im_middle|>"
                                  "<think></think>")


def test_processor_error_names_part(no_connections: list) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, image_part(data_url(b"not an image"))]}]

    with pytest.raises(MediaError) as caught:
        MediaProcessor().process_messages(messages)

    assert caught.value.param == "messages[0].content[1]"
    assert "messages[0].content[1]" in caught.value.message


# ---------------------------------------------------------------------------------------------
# Encoder-output cache


def test_content_hash_depends_on_pixels_and_grid() -> None:
    pixels = torch.arange(4 * 3 * 14 * 14, dtype=torch.float32).reshape(4, 3, 14, 14)

    base = media_content_hash(pixels, (1, 2, 2))

    assert base == media_content_hash(pixels.clone(), (1, 2, 2))
    assert base != media_content_hash(pixels, (4, 1, 1))
    changed = pixels.clone()
    changed[3, 2, 13, 13] += 1
    assert base != media_content_hash(changed, (1, 2, 2))
    assert len(base) == 64


def test_same_image_bytes_give_same_hash() -> None:
    data = encode_image(Image.fromarray(random_rgb(40, 30)))

    assert process_image(data, CONFIG).content_hash == process_image(data, CONFIG).content_hash
    assert process_image(data, CONFIG).content_hash != process_image(data, MediaConfig(in_patch_limit=1)).content_hash


def test_cache_lru_by_entries() -> None:
    cache = MediaCache(max_entries=2, max_bytes=None)
    cache.put("a", torch.zeros(1))
    cache.put("b", torch.zeros(1))

    assert cache.get("a") is not None
    cache.put("c", torch.zeros(1))

    assert "a" in cache
    assert "c" in cache
    assert "b" not in cache
    assert len(cache) == 2


def test_cache_lru_by_bytes() -> None:
    cache = MediaCache(max_entries=None, max_bytes=100)
    cache.put("a", torch.zeros(10))  # 40 bytes
    cache.put("b", torch.zeros(10))
    cache.put("c", torch.zeros(10))

    assert "a" not in cache
    assert cache.stats().nbytes == 80
    assert cache.put("huge", torch.zeros(100)) is False
    assert "huge" not in cache
    assert cache.stats().entries == 2


def test_cache_replacing_key_keeps_byte_count() -> None:
    cache = MediaCache(max_entries=None, max_bytes=1000)
    cache.put("a", torch.zeros(10))
    cache.put("a", torch.zeros(20))

    assert cache.stats().nbytes == 80
    assert len(cache) == 1


def test_cache_stats_count_hits_and_misses() -> None:
    cache = MediaCache()
    cache.put("a", torch.zeros(1))
    cache.get("a")
    cache.get("b")

    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
    cache.clear()
    assert cache.stats() == type(stats)(hits=0, misses=0, entries=0, nbytes=0)


def test_cache_thread_safety() -> None:
    cache = MediaCache(max_entries=50, max_bytes=50 * 40)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            for _ in range(2000):
                key = str(int(rng.integers(0, 200)))
                if cache.get(key) is None:
                    cache.put(key, torch.zeros(int(rng.integers(1, 20))))
        except BaseException as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    stats = cache.stats()
    assert stats.entries <= 50
    assert stats.nbytes <= 50 * 40
    assert stats.nbytes == sum(cache.get(key).nelement() * 4 for key in list(cache._entries))
    assert stats.hits + stats.misses >= 8 * 2000


class CountingEncoder:
    """Fake encoder: each item's rows are filled with its first pixel value; counts calls and items."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pixel_values: torch.Tensor, grid_thws: list[tuple[int, int, int]]) -> torch.Tensor:
        self.calls.append(len(grid_thws))
        rows, offset = [], 0
        for t, h, w in grid_thws:
            rows.append(pixel_values[offset, 0, 0, 0].expand(h * w // 4, 8))
            offset += t * h * w
        return torch.cat(rows)


def test_encode_with_cache_skips_repeated_items() -> None:
    images = [process_image(Image.new("RGB", (28 * k, 28), (40 * k, 0, 0)), CONFIG) for k in (1, 2, 3)]
    encoder = CountingEncoder()
    cache = MediaCache()

    first = encode_with_cache(images[:2], encoder, cache)
    second = encode_with_cache([images[1], images[2], images[0]], encoder, cache)

    assert encoder.calls == [2, 1]
    assert first.shape == (1 + 2, 8)
    assert second.shape == (2 + 3 + 1, 8)
    assert torch.equal(second[:2], first[1:3])
    assert torch.equal(second[5:], first[:1])
    assert cache.stats().hits == 2


def test_encode_without_cache_encodes_everything() -> None:
    images = [process_image(Image.new("RGB", (28, 28)), CONFIG)] * 2
    encoder = CountingEncoder()

    output = encode_with_cache(images, encoder, None)

    assert encoder.calls == [2]
    assert output.shape == (2, 8)


def test_encode_with_cache_checks_row_count() -> None:
    image = process_image(Image.new("RGB", (56, 56)), CONFIG)

    with pytest.raises(ValueError, match="returned 1 rows for 1 media items that need 4 tokens"):
        encode_with_cache([image], lambda pixels, grids: torch.zeros(1, 8), MediaCache())


def test_processed_media_fit_vision_tower(lossless_clip: bytes) -> None:
    from kimi_k25.model.config import KimiK25Config
    from kimi_k25.model.init import init_random_weights
    from kimi_k25.model.kimi_k25 import KimiK25Model

    config = KimiK25Config.from_file(Path(__file__).parent.parent / "kimi_k25" / "default_model" / "config.json")
    model = init_random_weights(KimiK25Model(config)).eval()
    image = process_image(Image.fromarray(random_rgb(60, 45)), CONFIG)
    video = process_video(lossless_clip, CONFIG)
    items = [image, *video.chunks]
    cache = MediaCache()

    with torch.no_grad():
        cold = encode_with_cache(items, model.encode_media, cache)
        warm = encode_with_cache(items, model.encode_media, cache)
        direct = model.encode_media(*_concat(items))

    assert cold.shape == (6 + 6 + 6, config.text.hidden_size)
    assert torch.allclose(cold, direct, atol=1e-5)
    assert torch.equal(cold, warm)


def _concat(items: list[MediaItem]) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    from kimi_k25.media import concat_media

    return concat_media(items)
