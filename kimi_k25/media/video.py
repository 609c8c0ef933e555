"""Video: decode with PyAV, sample frames, cut them into chunks, and give each chunk a timestamped prompt.

The rule of the official Kimi K2.5 processor, for F decoded frames at a native rate of `fps`:

1. fps_s = min(sample_fps, fps); n = max(round(F · fps_s / fps), 1); the sampled indices are
   linspace(0, F − 1, n) rounded to integers.
2. Consecutive groups of `temporal_merge_kernel_size` sampled frames form chunks. The last chunk
   may be shorter and is not padded, so its grid t is its frame count.
3. A chunk starts at (its first frame index) / fps seconds. Its prompt is that time as
   HH:MM:SS.fff, with milliseconds truncated, followed by the video media tokens.
4. Every frame of a chunk is resized with the per-frame patch limit (4096 for K2.5), using the
   size that the chunk's first frame gets.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from kimi_k25.chat import tokens
from kimi_k25.media.config import MediaConfig
from kimi_k25.media.errors import (
    IMAGE_TOO_LARGE,
    INVALID_VIDEO,
    MEDIA_TOO_LARGE,
    TOO_MANY_FRAMES,
    VIDEO_TOO_LONG,
    MediaError,
    describe_part,
)
from kimi_k25.media.items import MediaItem, ProcessedVideo
from kimi_k25.media.patches import ResizePlan, frames_to_patches, plan_resize, resize_and_pad

logger = logging.getLogger(__name__)

VIDEO_CHUNK_PROMPT = tokens.MEDIA_BEGIN + "video" + tokens.MEDIA_CONTENT + tokens.MEDIA_PAD + tokens.MEDIA_END


@dataclass(frozen=True)
class VideoInfo:
    """Stream facts read before any frame is decoded."""

    width: int
    height: int
    fps: float
    # Frames in the stream, counted from its packets.
    num_frames: int
    # Seconds, from the stream or container header; None when the header has none.
    duration: float | None


def sample_frame_indices(num_frames: int, fps: float, config: MediaConfig) -> list[int]:
    """Return the indices of the frames to keep out of `num_frames` frames at `fps` frames per second."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    sample_fps = min(config.sample_fps, fps)
    count = max(round(num_frames * sample_fps / fps), 1)
    if config.max_num_frames_each_video is not None:
        # NOTE: the official K2.5 processor has this key (null in the checkpoint) but its chunking
        # path never reads it. Capping the sample count is this package's reading of the name.
        count = min(count, config.max_num_frames_each_video)
    return np.linspace(0, num_frames - 1, count).round().astype(int).tolist()


def split_chunks(frame_indices: Sequence[int], config: MediaConfig) -> list[list[int]]:
    """Group sampled frame indices into chunks of `temporal_merge_kernel_size`; the last may be shorter."""
    size = config.temporal_merge_kernel_size
    return [list(frame_indices[start:start + size]) for start in range(0, len(frame_indices), size)]


def format_timestamp(seconds: float, mode: str = "hh:mm:ss.fff") -> str:
    """Format a chunk start time as the K2.5 prompt spells it.

    Milliseconds are int((t mod 1) · 1000), a truncation, so float error shows: 6.3 s gives
    `00:00:06.299`. Hours wrap at 24 as a UTC clock time does.
    """
    whole = int(seconds)
    hours, minutes, secs = (whole // 3600) % 24, (whole // 60) % 60, whole % 60
    milliseconds = int((seconds % 1) * 1000)
    if mode == "hh:mm:ss.fff":
        return f"{hours:02d}:{minutes:02d}:{secs:02d}.{milliseconds:03d}"
    if mode == "mm:ss.fff":
        return f"{minutes:02d}:{secs:02d}.{milliseconds:03d}"
    if mode == "mm:ss":
        return f"{minutes:02d}:{secs:02d}"
    raise ValueError(f"unknown timestamp_mode {mode!r}")


def chunk_prompt(timestamp_text: str) -> str:
    """Return one chunk's prompt with a single MEDIA_PAD, to be expanded to the chunk's token count."""
    return timestamp_text + VIDEO_CHUNK_PROMPT


def probe_video(data: bytes, config: MediaConfig, param: str | None = None) -> VideoInfo:
    """Read a video's size, frame rate, duration and frame count without decoding frames.

    Raises MediaError when a limit in `config.limits` is exceeded: the header's duration is checked
    before reading packets, and packet counting stops as soon as the frame limit is passed.
    """
    where = describe_part(param)
    limits = config.limits
    with _open_container(data, where, param) as container:
        stream = _video_stream(container, where, param)
        context = stream.codec_context
        width, height = context.width, context.height
        if width < 1 or height < 1:
            raise MediaError(f"The video in {where} has no frame size in its header; the file may be corrupt.",
                             param, INVALID_VIDEO)
        if width * height > limits.max_image_pixels:
            raise MediaError(
                f"The video in {where} has {width}×{height} frames, more than this server's limit of "
                f"{limits.max_image_pixels} pixels per frame; send a lower-resolution video.", param, IMAGE_TOO_LARGE)

        fps = _frame_rate(stream)
        if fps is None:
            raise MediaError(f"The video in {where} has no frame rate in its header; re-encode it with a fixed "
                             "frame rate.", param, INVALID_VIDEO)
        duration = _header_duration(stream, container)
        if duration is not None and duration > limits.max_video_seconds:
            raise _too_long(where, param, duration, limits.max_video_seconds)

        num_frames = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                num_frames += 1
                if num_frames > limits.max_video_frames:
                    raise _too_many_frames(where, param, limits.max_video_frames)
                if num_frames / fps > limits.max_video_seconds:
                    raise _too_long(where, param, num_frames / fps, limits.max_video_seconds)
        except av.FFmpegError as error:
            # A damaged tail still leaves the frames before it; decoding finds out how many are usable.
            logger.warning("demuxing the video in %s stopped after %d packets: %s", where, num_frames, error)
    if num_frames == 0:
        raise MediaError(f"The video in {where} contains no video frames.", param, INVALID_VIDEO)
    return VideoInfo(width=width, height=height, fps=fps, num_frames=num_frames, duration=duration)


def process_video(data: bytes, config: MediaConfig, param: str | None = None) -> ProcessedVideo:
    """Decode a video, sample and chunk its frames, and process every chunk into a media item."""
    where = describe_part(param)
    if len(data) > config.limits.max_video_bytes:
        raise MediaError(
            f"The video in {where} is {len(data)} bytes, more than this server's limit of "
            f"{config.limits.max_video_bytes} bytes; send a shorter or more compressed video.", param, MEDIA_TOO_LARGE)
    if not data:
        raise MediaError(f"The video in {where} is empty (0 bytes); send the video file's contents.", param,
                         INVALID_VIDEO)

    info = probe_video(data, config, param)
    chunks, decoded = _decode_chunks(data, info.num_frames, info.fps, config, where, param)
    if chunks is None:
        # The stream decoded to fewer frames than it has packets, so the sample was planned on a
        # wrong count. Plan again on the frames that really decode; this costs a second pass.
        logger.warning("the video in %s has %d packets but %d decodable frames; sampling again", where,
                       info.num_frames, decoded)
        if decoded == 0:
            raise MediaError(f"No frame of the video in {where} could be decoded; the file may be corrupt.", param,
                             INVALID_VIDEO)
        chunks, decoded = _decode_chunks(data, decoded, info.fps, config, where, param)
        if chunks is None:
            raise MediaError(f"The video in {where} decodes differently on each pass; the file may be corrupt.",
                             param, INVALID_VIDEO)

    num_frames = decoded
    frame_indices = tuple(index for chunk in chunks for index in chunk.frame_indices)
    logger.debug("video %s: %d frames at %.3f fps, %d sampled, %d chunks, %d tokens", where, num_frames, info.fps,
                 len(frame_indices), len(chunks), sum(chunk.num_tokens for chunk in chunks))
    return ProcessedVideo(chunks=tuple(chunks), fps=info.fps, num_frames=num_frames, frame_indices=frame_indices,
                          width=info.width, height=info.height)


def _decode_chunks(data: bytes, num_frames: int, fps: float, config: MediaConfig, where: str,
                   param: str | None) -> tuple[list[MediaItem] | None, int]:
    """Decode once, keeping the sampled frames of a `num_frames`-frame plan.

    Returns (chunks, num_frames) on success. When the stream ends before the last sampled frame,
    returns (None, the number of frames that did decode).
    """
    sampled = sample_frame_indices(num_frames, fps, config)
    chunk_indices = split_chunks(sampled, config)
    patch_limit = config.frame_patch_limit(len(sampled))
    chunk_of_frame = {index: chunk_number for chunk_number, chunk in enumerate(chunk_indices) for index in chunk}
    last_sampled = sampled[-1]

    chunks: list[MediaItem] = []
    pending: list[np.ndarray] = []
    plan: ResizePlan | None = None
    decoded = 0
    frames = _decode_frames(data, config, where, param)
    try:
        for index, video_frame in frames:
            decoded = index + 1
            if index not in chunk_of_frame:
                continue
            frame = Image.fromarray(video_frame.to_ndarray(format="rgb24"))
            if not pending:
                plan = plan_resize(frame.width, frame.height, patch_limit, config)
            pending.append(resize_and_pad(frame, plan))

            chunk_number = chunk_of_frame[index]
            if len(pending) == len(chunk_indices[chunk_number]):
                # Turn each finished chunk into patches now, so that only one chunk of uint8 frames is held.
                chunks.append(_chunk_item(pending, chunk_indices[chunk_number], fps, plan, config))
                pending = []
            if index == last_sampled:
                return chunks, num_frames
    finally:
        frames.close()
    return None, decoded


def _chunk_item(frames: list[np.ndarray], indices: list[int], fps: float, plan: ResizePlan,
                config: MediaConfig) -> MediaItem:
    pixel_values, grid_thw = frames_to_patches(frames, config)
    start = indices[0] / fps
    return MediaItem(
        kind="video_chunk",
        pixel_values=pixel_values,
        grid_thw=grid_thw,
        num_tokens=plan.num_tokens,
        prompt=chunk_prompt(format_timestamp(start, config.timestamp_mode)),
        resized_size=(plan.width, plan.height),
        timestamp=start,
        frame_indices=tuple(indices),
    )


def _decode_frames(data: bytes, config: MediaConfig, where: str,
                   param: str | None) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield (index, frame) for each decoded frame, enforcing the frame limit as it goes.

    NOTE: rotation metadata (the display matrix that phones write) is not applied, so frames come
    out as stored. Whether the official processor's video reader applies it is not known.
    """
    limit = config.limits.max_video_frames
    with _open_container(data, where, param) as container:
        stream = _video_stream(container, where, param)
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                if index >= limit:
                    raise _too_many_frames(where, param, limit)
                yield index, frame
                index += 1
        except av.FFmpegError as error:
            logger.warning("decoding the video in %s stopped after %d frames: %s", where, index, error)


def _open_container(data: bytes, where: str, param: str | None) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as error:
        raise MediaError(
            f"The video in {where} is not in a supported format or is corrupt ({error}); send MP4 (H.264), WebM, "
            "MKV or MOV.", param, INVALID_VIDEO) from error


def _video_stream(container: av.container.InputContainer, where: str, param: str | None) -> av.video.VideoStream:
    if not container.streams.video:
        raise MediaError(f"The file in {where} contains no video stream.", param, INVALID_VIDEO)
    return container.streams.video[0]


def _frame_rate(stream: av.video.VideoStream) -> float | None:
    # average_rate is FFmpeg's avg_frame_rate, the rate that the official processor's reader reports.
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            value = float(rate)
            if math.isfinite(value):
                return value
    return None


def _header_duration(stream: av.video.VideoStream, container: av.container.InputContainer) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _too_long(where: str, param: str | None, seconds: float, limit: float) -> MediaError:
    return MediaError(
        f"The video in {where} is {seconds:.1f} s long, more than this server's limit of {limit:g} s; send a shorter "
        "clip.", param, VIDEO_TOO_LONG)


def _too_many_frames(where: str, param: str | None, limit: int) -> MediaError:
    return MediaError(
        f"The video in {where} has more than {limit} frames, this server's limit; send a shorter clip or one with a "
        "lower frame rate.", param, TOO_MANY_FRAMES)
