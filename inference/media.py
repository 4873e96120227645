"""Any file a person posts, as the pictures the model reads: a picture, the pages of a PDF, or frames of an
animation or a short video. The kind is decided by the file's content, never its name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from inference.errors import ImageProblem, UnreadableImage
from inference.frames import Frame, animation_frames, frame_crops, is_animated, is_video, video_frames
from inference.images import decode_opened, decoding, open_image
from inference.pages import is_pdf, pdf_pages
from inference.types import Media


@dataclass(frozen=True)
class Pictures:
    """What one file gives the model: its pictures, what they are, and how to read them."""

    images: tuple[Image.Image, ...]
    media: Media = Media.PICTURES
    labels: tuple[str, ...] = ()  # "page 3", "1.5 s": with PAGES or FRAMES
    num_crops: int | None = None  # frames are read at fewer crops than a picture; None: the engine's own


def read_file(
    data: bytes,
    *,
    max_pixels: int,
    num_crops: int | None = None,
    max_pictures: int = 1,
    pages: Sequence[int] | None = None,
) -> Pictures:
    """The pictures in ``data``: up to ``max_pictures`` pages of a PDF (``pages``, 1-based, or the first
    ones) or frames of an animation or video; a still picture, or :class:`UnreadableImage` saying why not.
    With ``max_pictures`` 1 a document gives its first page (or the first of ``pages``) and an animation or
    video its middle frame, as plain pictures."""
    if not data:
        raise UnreadableImage(ImageProblem.EMPTY)
    if is_pdf(data):
        found = pdf_pages(
            data, max_pages=max_pictures, max_pixels=max_pixels, num_crops=num_crops, pages=pages
        )
        if len(found) == 1 and max_pictures == 1:
            return Pictures((found[0].image,))
        return Pictures(
            tuple(page.image for page in found), Media.PAGES, tuple(f"page {page.number}" for page in found)
        )
    if is_video(data):
        frames = video_frames(data, max_frames=max_pictures, max_pixels=max_pixels, num_crops=num_crops)
        return _frames(frames, frame_crops(num_crops, max_pictures))
    with open_image(data, max_pixels=max_pixels) as image:
        with decoding():  # counting a GIF's frames reads the whole file: a damaged one fails here
            animated = is_animated(image)
        if animated:
            frames = animation_frames(image, max_frames=max_pictures, num_crops=num_crops)
            return _frames(frames, frame_crops(num_crops, max_pictures))
        return Pictures((decode_opened(image, num_crops),))


def _frames(frames: list[Frame], crops: int | None) -> Pictures:
    """Frames, read at ``crops``: one is a plain picture, several are FRAMES with their times."""
    if len(frames) == 1:
        return Pictures((frames[0].image,), num_crops=crops)
    return Pictures(
        tuple(frame.image for frame in frames),
        Media.FRAMES,
        tuple(f"{frame.seconds:.1f} s" for frame in frames),
        crops,
    )
