"""How much memory one small hostile file costs to decode: pictures of a few kilobytes that open as 36
megapixels, each decoded by the intake the bot and the command line share, in a child process of its own.

    python bench/decode_memory.py                       # 6000 x 6000, the model at 16 crops
    python bench/decode_memory.py --side 4000 --crops none --kinds grey16,rgba

For each kind of file: its size on disk, how far the child's peak resident memory grew while decoding
(the kernel's peak mark, reset just before, less what was resident then: Pillow's own allocations
included, which tracemalloc misses; Linux only), the decode's wall time, and the size of the picture kept
for the model. One JSON line on stdout.
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

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("grey16", "rgba", "palette_alpha", "grey8", "rgb", "jpeg")

# Run in the child: read the file, reset the kernel's peak-memory mark, decode, read the peak (Linux).
CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from inference.images import decode_image

def status_kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

data = open(sys.argv[2], "rb").read()
crops = None if sys.argv[3] == "none" else int(sys.argv[3])
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from what is resident now
before = status_kib("VmRSS")
started = time.perf_counter()
image = decode_image(data, max_pixels=40_000_000, num_crops=crops)
seconds = time.perf_counter() - started
growth = round((status_kib("VmHWM") - before) / 1024, 1)
print(json.dumps({"growth_mib": growth, "decode_s": round(seconds, 3), "kept": list(image.size)}))
"""


def hostile_file(kind: str, side: int) -> bytes:
    """A picture of ``side`` x ``side`` pixels of one colour: a few kilobytes on disk, whatever its size."""
    out = io.BytesIO()
    if kind == "grey16":
        Image.fromarray(np.zeros((side, side), np.uint16)).save(out, "PNG", compress_level=9)
    elif kind == "rgba":
        Image.new("RGBA", (side, side), (10, 20, 30, 40)).save(out, "PNG", compress_level=9)
    elif kind == "palette_alpha":
        Image.new("P", (side, side), 3).save(out, "PNG", compress_level=9, transparency=3)
    elif kind == "grey8":
        Image.new("L", (side, side), 90).save(out, "PNG", compress_level=9)
    elif kind == "rgb":
        Image.new("RGB", (side, side), (10, 20, 30)).save(out, "PNG", compress_level=9)
    elif kind == "jpeg":
        Image.new("RGB", (side, side), (10, 20, 30)).save(out, "JPEG", quality=50)
    else:
        raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    return out.getvalue()


def measure(path: Path, crops: str) -> dict:
    """Decode one file in a fresh interpreter and return what the child reported."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(path), crops],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=6000, help="pixels on each side (default 6000: 36 MP)")
    parser.add_argument("--crops", default="16", help="the model's crops (1-16), or none for a model server")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of: {', '.join(KINDS)}")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.kinds.split(","):
            path = Path(folder) / f"{kind}.bin"
            path.write_bytes(hostile_file(kind, args.side))
            started = time.perf_counter()
            results[kind] = {"file_kib": round(path.stat().st_size / 1024, 1), **measure(path, args.crops)}
            print(f"{kind}: {results[kind]} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "pillow": Image.__version__,
                "side": args.side,
                "crops": args.crops,
                "by_kind": results,
                "worst_growth_mib": max(result["growth_mib"] for result in results.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
