"""What each new decoder costs on large inputs: PDF pages, animated GIF/WebP and videos, each read as the bot
reads them (4 pictures, the model at 16 crops), each in a child process of its own.

    python bench/media_decode.py                 # every case
    python bench/media_decode.py --cases gif_at_budget,video_1080p_60s

For each case: the file's size, how far the child's peak resident memory grew while reading it (the kernel's
peak mark, reset just before, less what was resident then: PDFium's, FFmpeg's and Pillow's own allocations
included; Linux only), the wall time, and what came out (pictures, their labels). One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pypdfium2
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from inference.media import read_file

def status_kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

data = open(sys.argv[2], "rb").read()
open("/proc/self/clear_refs", "w").write("5")
before = status_kib("VmRSS")
started = time.perf_counter()
try:
    pictures = read_file(data, max_pixels=40_000_000, num_crops=16, max_pictures=4)
    images, labels = pictures.images, list(pictures.labels)
    out = {"pictures": len(images), "labels": labels, "size": list(images[0].size)}
except Exception as error:
    out = {"refused": f"{type(error).__name__}: {error}"}
seconds = time.perf_counter() - started
out.update(growth_mib=round((status_kib("VmHWM") - before) / 1024, 1), read_s=round(seconds, 3))
print(json.dumps(out))
"""


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    )


def pdf_photo_pages() -> bytes:
    """12 A4 pages, each a 300 dpi photo (2480 x 3508 of noise as JPEG): what a scanned document is like."""
    pages = [noise((2480, 3508), seed) for seed in range(12)]
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:], resolution=300, quality=60)
    return out.getvalue()


def pdf_giant_page() -> bytes:
    """One page declared at the format's largest, 200 x 200 inches, holding a photo."""
    document = pypdfium2.PdfDocument.new()
    page = document.new_page(14_400, 14_400)
    picture = pypdfium2.PdfImage.new(document)
    picture.set_bitmap(pypdfium2.PdfBitmap.from_pil(noise((2000, 2000), 1)))
    picture.set_matrix(pypdfium2.PdfMatrix().scale(14_400, 14_400))
    page.insert_obj(picture)
    page.gen_content()
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def animation(side: int, frames: int, fmt: str) -> bytes:
    """Frames of one colour each: a small file that decodes to ``side``^2 x ``frames`` pixels."""
    pictures = [Image.new("RGB", (side, side), (index % 256, 40, 90)) for index in range(frames)]
    out = io.BytesIO()
    pictures[0].save(out, fmt, save_all=True, append_images=pictures[1:], duration=40, loop=0)
    return out.getvalue()


def video(size: tuple[int, int], seconds: int, fps: int = 30, keyint: int = 250) -> bytes:
    """H.264 (a key frame every ``keyint`` frames, 250 as x264's default), a noisy band over a gradient."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": str(keyint)})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        base = np.tile(np.linspace(0, 255, size[0], dtype=np.uint8)[None, :, None], (size[1], 1, 3))
        band = np.random.default_rng(0).integers(0, 256, (64, size[0], 3), dtype=np.uint8)
        for index in range(seconds * fps):
            pixels = base.copy()
            top = (index * 7) % (size[1] - 64)
            pixels[top : top + 64] = band
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


CASES = {
    "pdf_photo_pages": pdf_photo_pages,
    "pdf_giant_page": pdf_giant_page,
    "gif_500_300_frames": lambda: animation(500, 300, "GIF"),
    "gif_at_budget": lambda: animation(1000, 300, "GIF"),  # its samples take 263 of the 300 megapixels
    "gif_over_budget": lambda: animation(2000, 250, "GIF"),  # refused from its header: nothing decoded
    "webp_1000_100_frames": lambda: animation(1000, 100, "WEBP"),
    "video_1080p_60s": lambda: video((1920, 1080), 60),
    "video_4k_20s": lambda: video((3840, 2160), 20, keyint=60),
}


def measure(path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases.split(","):
            started = time.perf_counter()
            path = Path(folder) / name
            path.write_bytes(CASES[name]())
            made_s = time.perf_counter() - started
            results[name] = {"file_kib": round(path.stat().st_size / 1024, 1), **measure(path)}
            print(f"{name}: {results[name]} (made in {made_s:.1f} s)", file=sys.stderr)
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "pypdfium2": str(pypdfium2.version.PYPDFIUM_INFO),
                "av": av.__version__,
                "pillow": Image.__version__,
                "cases": results,
                "worst_growth_mib": max(result["growth_mib"] for result in results.values()),
                "slowest_read_s": max(result["read_s"] for result in results.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
