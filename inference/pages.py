"""Pages of a PDF as pictures: rendered by PDFium (pypdfium2) at the size the model reads them.

A page is rendered straight at the model's canvas for its shape (sharper text than rendering large and
reducing), so however large the page claims to be, the bitmap is at most that canvas: a few megapixels.
PDFium parses the document in this process; the download limit bounds the file, and only the pages asked
for are rendered, at most the request's number of pictures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from inference.errors import ImageProblem, TooManyImages, UnreadableImage
from inference.hd_canvas import hd_canvas_size
from inference.images import MAX_CROPS, for_model

PDF_MAGIC = b"%PDF-"
# The PDF format's own largest page side, in points (200 inches); larger sizes are damaged files.
MAX_PAGE_POINTS = 14_400
# A page drawn larger than this many pixels per point (288 dpi) would only be reduced again.
MAX_SCALE = 4.0


@dataclass(frozen=True)
class Page:
    image: Image.Image
    number: int  # 1-based, as people count pages


def is_pdf(data: bytes) -> bool:
    """A PDF starts with its header (viewers allow some bytes before it; we do not)."""
    return data.startswith(PDF_MAGIC)


def pdf_pages(
    data: bytes,
    *,
    max_pages: int,
    max_pixels: int,
    num_crops: int | None,
    pages: Sequence[int] | None = None,
) -> list[Page]:
    """The ``pages`` (1-based numbers; default the first ``max_pages``) of the PDF in ``data``, each an RGB
    picture as :func:`inference.images.decode_image` would give it, or :class:`UnreadableImage` (a password,
    no pages, a page it does not have, a damaged file) or :class:`TooManyImages`."""
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as error:
        raise UnreadableImage(_open_problem(getattr(error, "err_code", None), data)) from None
    try:
        count = len(document)
        if count < 1:
            raise UnreadableImage(ImageProblem.NO_PAGES)
        numbers = list(pages) if pages else list(range(1, min(count, max_pages) + 1))
        if len(numbers) > max_pages:
            raise TooManyImages(len(numbers), max_pages)
        if max(numbers) > count or min(numbers) < 1:
            raise UnreadableImage(ImageProblem.NO_SUCH_PAGE, limit=count)
        return [Page(_render(document, number, max_pixels, num_crops), number) for number in numbers]
    finally:
        document.close()


def _open_problem(code: int | None, data: bytes) -> ImageProblem:
    """Why PDFium would not open a document. It refuses a document without pages, saying "success" or, for
    some, "password"; a password needs an encryption dictionary, which is never itself encrypted."""
    if code == pdfium_c.FPDF_ERR_PASSWORD and b"/Encrypt" in data:
        return ImageProblem.PASSWORD
    if code in (pdfium_c.FPDF_ERR_SUCCESS, pdfium_c.FPDF_ERR_PASSWORD):
        return ImageProblem.NO_PAGES
    return ImageProblem.DAMAGED


def _render(document: pdfium.PdfDocument, number: int, max_pixels: int, num_crops: int | None) -> Image.Image:
    try:
        page = document[number - 1]
    except pdfium.PdfiumError:
        raise UnreadableImage(ImageProblem.DAMAGED) from None
    try:
        width, height = page.get_size()  # points, the page's rotation applied
        if not (0 < width <= MAX_PAGE_POINTS and 0 < height <= MAX_PAGE_POINTS):
            raise UnreadableImage(ImageProblem.DAMAGED)
        canvas_w, canvas_h = hd_canvas_size(
            max(1, round(width)), max(1, round(height)), num_crops or MAX_CROPS
        )
        scale = min(canvas_w / width, canvas_h / height, MAX_SCALE)
        if width * height * scale * scale > max_pixels:
            scale = (max_pixels / (width * height)) ** 0.5
        try:
            picture = page.render(scale=scale, may_draw_forms=False).to_pil()
        except pdfium.PdfiumError:
            raise UnreadableImage(ImageProblem.DAMAGED) from None
        return for_model(picture, num_crops)
    finally:
        page.close()
