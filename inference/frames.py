"""Frames of an animated GIF or WebP (Pillow) or a short video (PyAV, with FFmpeg inside), sampled evenly
through it, each with its time, as pictures the model reads.

Frames are read at :data:`FRAME_CROPS` crops, as Phi-3.5-vision's model card recommends for several
frames. What decoding may cost is bounded before and while it runs: a video's length and size are checked
from its header, and the frames decoded to reach the samples count against a budget of pixels. A GIF or WebP
is decoded frame after frame, and refused when its samples lie beyond :data:`MAX_ANIMATION_PIXELS`; a video is
decoded from the key frame before each sample, and where key frames lie far apart a sample is the last frame
decoded within its share of :data:`MAX_DECODED_PIXELS`, with its true time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
from PIL import Image

from inference.errors import ImageProblem, UnreadableImage
from inference.images import decoding, for_model

FRAME_CROPS = 4
MAX_VIDEO_SECONDS = 300
# Pixels decoded for one file at most, frames skipped on the way included. A video's (FFmpeg) decodes about
# 1 GP/s on one core, an animation's (Pillow) about 0.1 GP/s: each budget is a few seconds (bench/RESULTS.md).
MAX_DECODED_PIXELS = 2_000_000_000
MAX_ANIMATION_PIXELS = 300_000_000
# Containers read, by FFmpeg's demuxer names: MP4 and QuickTime (.mp4, .mov, .m4v), Matroska and WebM.
VIDEO_FORMATS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})
MATROSKA_MAGIC = b"\x1a\x45\xdf\xa3"


@dataclass(frozen=True)
class Frame:
    image: Image.Image
    seconds: float  # from the start


def is_video(data: bytes) -> bool:
    """MP4 or QuickTime (an ``ftyp`` box first) or Matroska/WebM (its EBML header), by content."""
    return data[4:8] == b"ftyp" or data.startswith(MATROSKA_MAGIC)


def is_animated(image: Image.Image) -> bool:
    return bool(getattr(image, "is_animated", False)) and getattr(image, "n_frames", 1) > 1


def sample_indices(count: int, wanted: int) -> list[int]:
    """``wanted`` of ``count`` positions spread evenly, each the middle of its share."""
    wanted = max(1, min(wanted, count))
    return sorted({int((index + 0.5) * count / wanted) for index in range(wanted)})


def animation_frames(image: Image.Image, *, max_frames: int, num_crops: int | None) -> list[Frame]:
    """Up to ``max_frames`` frames of an opened animated GIF or WebP, evenly spread, with their times."""
    picks = sample_indices(getattr(image, "n_frames", 1), max_frames)
    decoded = (picks[-1] + 1) * image.width * image.height
    if decoded > MAX_ANIMATION_PIXELS:
        raise UnreadableImage(
            ImageProblem.TOO_MANY_FRAMES, limit=MAX_ANIMATION_PIXELS // (image.width * image.height)
        )
    crops = frame_crops(num_crops, max_frames)
    frames: list[Frame] = []
    elapsed_ms = 0.0
    with decoding():
        for index in range(picks[-1] + 1):
            image.seek(index)
            image.load()  # WebP says a frame's duration only once it is decoded
            if index in picks:
                frames.append(Frame(for_model(image, crops), elapsed_ms / 1000))
            elapsed_ms += float(image.info.get("duration") or 0)
    return frames


def video_frames(data: bytes, *, max_frames: int, max_pixels: int, num_crops: int | None) -> list[Frame]:
    """Up to ``max_frames`` frames of the video in ``data``, evenly spread through it, with their times, or
    :class:`UnreadableImage` (not a video we read, no video stream, too long, too large, damaged)."""
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, UnicodeDecodeError):
        raise UnreadableImage(ImageProblem.DAMAGED) from None
    try:
        if container.format.name not in VIDEO_FORMATS:
            raise UnreadableImage(ImageProblem.NOT_AN_IMAGE, formats="MP4, WEBM, MOV")
        if not container.streams.video:
            raise UnreadableImage(ImageProblem.NO_VIDEO)
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width < 1 or height < 1:
            raise UnreadableImage(ImageProblem.NO_PIXELS)
        if width * height > max_pixels:
            raise UnreadableImage(ImageProblem.TOO_MANY_PIXELS, width=width, height=height, limit=max_pixels)
        seconds = _duration(container, stream)
        if seconds > MAX_VIDEO_SECONDS:
            raise UnreadableImage(ImageProblem.TOO_LONG, limit=MAX_VIDEO_SECONDS)
        budget = MAX_DECODED_PIXELS // (width * height)  # frames this file may decode in all
        if budget < 1:
            raise UnreadableImage(ImageProblem.TOO_MANY_FRAMES, limit=0)
        wanted = max(1, max_frames)
        times = [(index + 0.5) * seconds / wanted for index in range(wanted)]
        crops = frame_crops(num_crops, max_frames)
        frames: list[Frame] = []
        for left, target in zip(range(wanted, 0, -1), times):
            frame, spent = _frame_at(container, stream, target, max(1, budget // left))
            budget -= spent
            if frame is not None and (not frames or frame.seconds > frames[-1].seconds):
                frames.append(Frame(for_model(frame.image, crops), frame.seconds))
        if not frames:
            raise UnreadableImage(ImageProblem.DAMAGED)
        return frames
    except av.FFmpegError:
        raise UnreadableImage(ImageProblem.DAMAGED) from None
    finally:
        container.close()


def frame_crops(num_crops: int | None, max_frames: int) -> int | None:
    """The crops frames are read at: one frame as a picture (``num_crops``), several at
    :data:`FRAME_CROPS`, never more than the engine reads a picture at."""
    if max_frames <= 1:
        return num_crops
    return FRAME_CROPS if num_crops is None else min(FRAME_CROPS, num_crops)


def _duration(container, stream) -> float:
    """The video's length in seconds: from the header, or, where the header does not say (a WebM recorded
    in a browser), from the last packet's time, found by reading packets without decoding them."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    last = 0.0
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base is not None:
            last = max(last, float(packet.pts * packet.time_base))
    container.seek(0)
    return last


def _frame_at(container, stream, target: float, budget: int) -> tuple[Frame | None, int]:
    """The first frame at or after ``target`` seconds, decoding from the key frame before it, and how many
    frames that decoded. Where reaching it would take more than ``budget`` frames (key frames far apart), the
    last frame decoded within the budget, with its own time: a frame a little earlier, said truly."""
    container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
    decoded = 0
    last, seconds = None, target
    for frame in container.decode(stream):
        decoded += 1
        last, seconds = frame, float(frame.time) if frame.time is not None else target
        if seconds >= target or decoded >= budget:
            break
    return (None if last is None else Frame(upright(last), seconds)), decoded


def upright(frame) -> Image.Image:
    """A decoded frame as a player shows it: turned by the video's display matrix (a phone's portrait video
    is stored sideways with a quarter turn to apply; ``rotation`` is counterclockwise, as Pillow's
    ``rotate``)."""
    picture = frame.to_image()
    turn = round(getattr(frame, "rotation", 0) or 0) % 360
    return picture.rotate(turn, expand=True) if turn else picture
