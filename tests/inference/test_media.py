"""Every kind of file people post, read as the pictures the model sees: PDFs, animations, videos."""

from __future__ import annotations

import numpy as np
import pytest

from inference import frames, media
from inference.errors import ImageProblem, TooManyImages, UnreadableImage
from inference.hd_canvas import hd_canvas_size
from inference.media import read_file
from inference.types import Media
from tests.media_files import (
    animation_bytes,
    audio_only_bytes,
    empty_pdf_bytes,
    locked_pdf_bytes,
    pdf_bytes,
    pdf_from_objects,
    portrait_video_bytes,
    video_bytes,
)

MAX_PIXELS = 40_000_000


def problem(data: bytes, **options) -> UnreadableImage:
    with pytest.raises(UnreadableImage) as caught:
        read_file(data, max_pixels=options.pop("max_pixels", MAX_PIXELS), **options)
    return caught.value


def redness(picture) -> float:
    return float(np.asarray(picture)[..., 0].mean())


# ---------------------------------------------------------------- PDF


def test_a_pdf_gives_its_first_pages_labelled_and_rendered_at_the_models_canvas():
    pictures = read_file(pdf_bytes(pages=6), max_pixels=MAX_PIXELS, num_crops=16, max_pictures=4)
    assert pictures.media is Media.PAGES
    assert pictures.labels == ("page 1", "page 2", "page 3", "page 4")
    assert pictures.num_crops is None  # pages are read like pictures
    assert {picture.size for picture in pictures.images} == {hd_canvas_size(600, 800, 16)}
    # the page's text is drawn: dark pixels where "Page N" is written, white around it
    grey = np.asarray(pictures.images[0].convert("L"))
    assert grey.min() < 128 and np.median(grey) == 255


def test_the_pages_asked_for_in_their_order():
    pictures = read_file(pdf_bytes(pages=5), max_pixels=MAX_PIXELS, num_crops=4, max_pictures=4, pages=[5, 2])
    assert pictures.labels == ("page 5", "page 2")
    assert pictures.images[0].size == hd_canvas_size(600, 800, 4)


def test_one_picture_of_a_pdf_is_its_first_page_as_a_plain_picture():
    pictures = read_file(pdf_bytes(pages=3), max_pixels=MAX_PIXELS, num_crops=16, max_pictures=1)
    assert pictures.media is Media.PICTURES and pictures.labels == () and len(pictures.images) == 1


def test_a_page_the_document_does_not_have_says_how_many_it_has():
    error = problem(pdf_bytes(pages=2), max_pictures=4, pages=[3])
    assert error.problem is ImageProblem.NO_SUCH_PAGE and error.limit == 2


def test_more_pages_than_a_request_takes_are_refused():
    with pytest.raises(TooManyImages):
        read_file(pdf_bytes(pages=6), max_pixels=MAX_PIXELS, max_pictures=4, pages=[1, 2, 3, 4, 5])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (locked_pdf_bytes(), ImageProblem.PASSWORD),
        (empty_pdf_bytes(), ImageProblem.NO_PAGES),
        (pdf_bytes()[:300], ImageProblem.DAMAGED),
        (b"%PDF-1.7\n" + b"0" * 100, ImageProblem.DAMAGED),
    ],
    ids=["password", "no pages", "cut short", "garbage"],
)
def test_a_pdf_that_cannot_be_read_says_why(data, expected):
    assert problem(data, max_pictures=4).problem is expected


def test_a_page_claiming_an_impossible_size_is_damaged_not_a_giant_bitmap():
    data = pdf_from_objects(
        [
            "<< /Type /Catalog /Pages 2 0 R >>",
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 900000 900000] >>",
        ],
        "/Root 1 0 R",
    )
    assert problem(data, max_pictures=4).problem is ImageProblem.DAMAGED


def test_a_page_is_rendered_within_the_pixel_limit():
    pictures = read_file(pdf_bytes(pages=1), max_pixels=100_000, num_crops=16, max_pictures=4)
    width, height = pictures.images[0].size
    assert width * height <= hd_canvas_size(600, 800, 16)[0] * hd_canvas_size(600, 800, 16)[1]


# ---------------------------------------------------------------- animations and videos


@pytest.mark.parametrize("format", ["GIF", "WEBP"])
def test_an_animation_gives_frames_spread_through_it_with_their_times(format):
    pictures = read_file(
        animation_bytes(frames=20, format=format, frame_ms=100),
        max_pixels=MAX_PIXELS,
        num_crops=16,
        max_pictures=4,
    )
    assert pictures.media is Media.FRAMES
    assert pictures.labels == ("0.2 s", "0.7 s", "1.2 s", "1.7 s")  # frames 2, 7, 12, 17 of 20
    assert pictures.num_crops == frames.FRAME_CROPS
    reds = [redness(picture) for picture in pictures.images]
    assert reds == sorted(reds) and reds[0] < reds[-1]  # in order, from the dark start to the red end


@pytest.mark.parametrize("container", ["mp4", "webm", "mov"])
def test_a_video_gives_frames_spread_through_it_with_their_times(container):
    pictures = read_file(
        video_bytes(seconds=4, fps=10, container=container),
        max_pixels=MAX_PIXELS,
        num_crops=16,
        max_pictures=4,
    )
    assert pictures.media is Media.FRAMES
    times = [float(label.removesuffix(" s")) for label in pictures.labels]
    assert times == pytest.approx([0.5, 1.5, 2.5, 3.5], abs=0.11)
    assert pictures.num_crops == frames.FRAME_CROPS
    reds = [redness(picture) for picture in pictures.images]
    assert reds == sorted(reds) and reds[-1] - reds[0] > 100


def test_frames_never_take_more_crops_than_the_engine_reads_a_picture_at():
    pictures = read_file(video_bytes(), max_pixels=MAX_PIXELS, num_crops=2, max_pictures=4)
    assert pictures.num_crops == 2


def test_one_picture_of_a_video_or_animation_is_its_middle_frame():
    for data in (video_bytes(seconds=4, fps=10), animation_bytes(frames=21)):
        pictures = read_file(data, max_pixels=MAX_PIXELS, num_crops=16, max_pictures=1)
        assert pictures.media is Media.PICTURES and len(pictures.images) == 1
        assert 100 < redness(pictures.images[0]) < 160  # half way from black to red


def test_a_video_longer_than_the_limit_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(frames, "MAX_VIDEO_SECONDS", 2)
    error = problem(video_bytes(seconds=3), max_pictures=4)
    assert error.problem is ImageProblem.TOO_LONG and error.limit == 2


def test_a_video_larger_than_the_pixel_limit_is_refused_from_its_header():
    error = problem(video_bytes(size=(320, 240)), max_pictures=4, max_pixels=320 * 240 - 1)
    assert error.problem is ImageProblem.TOO_MANY_PIXELS and (error.width, error.height) == (320, 240)


def test_a_video_with_far_key_frames_gives_earlier_frames_within_the_budget_with_their_true_times(
    monkeypatch,
):
    data = video_bytes(seconds=4, fps=10)  # one key frame: every sample is decoded from the start
    monkeypatch.setattr(frames, "MAX_DECODED_PIXELS", 320 * 240 * 12)  # 12 frames in all, 3 a sample
    pictures = read_file(data, max_pixels=MAX_PIXELS, num_crops=16, max_pictures=4)
    times = [float(label.removesuffix(" s")) for label in pictures.labels] if pictures.labels else [0.0]
    assert max(times) <= 0.3  # never decoded past the budget (a sample's own time would be 0.5 s or later)
    monkeypatch.setattr(frames, "MAX_DECODED_PIXELS", 320 * 240 - 1)  # not even one frame
    assert problem(data, max_pictures=4).problem is ImageProblem.TOO_MANY_FRAMES


def test_an_animation_beyond_the_decoding_budget_is_refused(monkeypatch):
    monkeypatch.setattr(frames, "MAX_ANIMATION_PIXELS", 100 * 80 * 5)
    assert problem(animation_bytes(frames=20), max_pictures=4).problem is ImageProblem.TOO_MANY_FRAMES


def test_sound_without_pictures_and_damaged_videos_say_why():
    assert problem(audio_only_bytes(), max_pictures=4).problem is ImageProblem.NO_VIDEO
    assert problem(video_bytes()[:200], max_pictures=4).problem is ImageProblem.DAMAGED
    assert problem(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, max_pictures=4).problem is ImageProblem.DAMAGED


def test_a_still_picture_is_one_picture_whatever_the_number_allowed():
    from tests.conftest import image_bytes

    pictures = media.read_file(image_bytes((64, 48)), max_pixels=MAX_PIXELS, max_pictures=4)
    assert pictures.media is Media.PICTURES and len(pictures.images) == 1


def test_sample_indices_are_spread_and_distinct():
    assert frames.sample_indices(20, 4) == [2, 7, 12, 17]
    assert frames.sample_indices(3, 4) == [0, 1, 2]
    assert frames.sample_indices(1, 4) == [0]


def test_frames_are_prepared_at_their_own_crops_and_pages_at_the_engines(tiny_processor):
    from inference.prepare import Preparer
    from inference.types import EngineConfig, Request, Task

    preparer = Preparer(tiny_processor, EngineConfig(max_images=4), token_budget=1 << 20)
    video = read_file(video_bytes(size=(1280, 720)), max_pixels=MAX_PIXELS, num_crops=16, max_pictures=4)
    prepared = preparer.prepare(
        Request(
            Task.DESCRIBE, video.images, media=video.media, labels=video.labels, num_crops=video.num_crops
        )
    )
    assert prepared.pixel_values.shape[:2] == (4, frames.FRAME_CROPS + 1)
    assert all(int(h) * int(w) <= frames.FRAME_CROPS * 336 * 336 for h, w in prepared.image_sizes.tolist())
    document = read_file(pdf_bytes(pages=2), max_pixels=MAX_PIXELS, num_crops=16, max_pictures=4)
    prepared = preparer.prepare(
        Request(Task.OCR, document.images, media=document.media, labels=document.labels)
    )
    assert prepared.pixel_values.shape[:2] == (2, tiny_processor.image_processor.num_crops + 1)


def test_the_readme_and_the_usage_page_state_the_limits_the_code_keeps():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme, using = (root / "README.md").read_text(), (root / "docs" / "using.md").read_text()
    assert f"up to {frames.MAX_VIDEO_SECONDS // 60} minutes" in readme
    assert f"Limits: {frames.MAX_VIDEO_SECONDS // 60} minutes" in using
    assert f"at {frames.FRAME_CROPS} crops" in using
    assert f"{frames.MAX_DECODED_PIXELS // 10**9} gigapixels for a video" in using
    assert f"{frames.MAX_ANIMATION_PIXELS // 10**6} megapixels for an animation" in using


@pytest.mark.parametrize("cut", [400, 1000])
def test_an_animation_cut_short_before_its_frames_is_damaged(cut):
    assert problem(animation_bytes(frames=20)[:cut], max_pictures=4).problem is ImageProblem.DAMAGED


def test_a_portrait_phone_video_is_read_upright():
    pictures = read_file(portrait_video_bytes(), max_pixels=MAX_PIXELS, num_crops=16, max_pictures=1)
    [frame] = pictures.images
    assert frame.height > frame.width  # stored 64 x 32, shown 32 x 64
    top, bottom = frame.getpixel((frame.width // 2, 2)), frame.getpixel((frame.width // 2, frame.height - 3))
    assert (
        top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    )  # a quarter turn clockwise: the left half on top
