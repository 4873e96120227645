"""Real files of every kind people post, made in the test: PDFs, animations, videos (no fixtures to keep)."""

from __future__ import annotations

import io
import struct

import av
from PIL import Image, ImageDraw


def pdf_bytes(pages: int = 3, size: tuple[int, int] = (600, 800)) -> bytes:
    """A PDF of ``pages`` white pages, each saying its number (Pillow writes it)."""
    pictures = [Image.new("RGB", size, "white") for _ in range(pages)]
    for number, picture in enumerate(pictures, start=1):
        ImageDraw.Draw(picture).text((40, 40), f"Page {number}", fill="black")
    buffer = io.BytesIO()
    pictures[0].save(buffer, "PDF", save_all=True, append_images=pictures[1:])
    return buffer.getvalue()


def pdf_from_objects(objects: list[str], trailer: str) -> bytes:
    """A PDF written object by object, with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} {trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def locked_pdf_bytes() -> bytes:
    """A PDF encrypted with a user password (the standard handler; its check value matches no password)."""
    return pdf_from_objects(
        [
            "<< /Type /Catalog /Pages 2 0 R >>",
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
            f"<< /Filter /Standard /V 1 /R 2 /O <{'ab' * 32}> /U <{'cd' * 32}> /P -4 >>",
        ],
        f"/Root 1 0 R /Encrypt 4 0 R /ID [<{'01' * 16}> <{'01' * 16}>]",
    )


def empty_pdf_bytes() -> bytes:
    """A well-formed PDF whose page tree has no pages."""
    return pdf_from_objects(
        ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [] /Count 0 >>"], "/Root 1 0 R"
    )


def animation_bytes(
    frames: int = 20, size: tuple[int, int] = (100, 80), format: str = "GIF", frame_ms: int = 100
) -> bytes:
    """An animated GIF or WebP whose frames go from black to red, ``frame_ms`` each."""
    pictures = [Image.new("RGB", size, (min(255, index * 12), 0, 0)) for index in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format, save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
    return buffer.getvalue()


def video_bytes(
    seconds: float = 3, fps: int = 10, size: tuple[int, int] = (320, 240), container: str = "mp4"
) -> bytes:
    """A video (mp4 H.264, webm VP8 or mov MPEG-4) whose frames go from black to red."""
    codec = {"mp4": "libx264", "webm": "libvpx", "mov": "mpeg4"}[container]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        count = max(1, round(seconds * fps))
        for index in range(count):
            picture = Image.new("RGB", size, (round(255 * index / count), 0, 0))
            for packet in stream.encode(av.VideoFrame.from_image(picture)):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def audio_only_bytes(seconds: float = 1.0) -> bytes:
    """An MP4 with sound and no picture."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("aac", rate=16000)
        samples = int(16000 * seconds)
        frame = av.AudioFrame(format="fltp", layout="mono", samples=samples)
        frame.planes[0].update(bytes(4 * samples))
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            output.mux(packet)
    return buffer.getvalue()


def portrait_video_bytes(size: tuple[int, int] = (64, 32)) -> bytes:
    """An MP4 stored sideways as phones store portrait video: landscape frames (left half red, right half
    blue) with a quarter turn clockwise in its track's display matrix (``tkhd``), which players apply."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        picture = Image.new("RGB", size, (0, 0, 255))
        picture.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
        for _ in range(5):
            for packet in stream.encode(av.VideoFrame.from_image(picture)):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    data = bytearray(buffer.getvalue())
    box = data.find(b"tkhd")
    assert data[box + 4] == 0  # version 0: 32-bit times
    matrix = (
        box + 4 + 4 + 20 + 8 + 8
    )  # version and flags, times and ids, reserved, layer to volume and reserved
    struct.pack_into(">9i", data, matrix, 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    return bytes(data)
