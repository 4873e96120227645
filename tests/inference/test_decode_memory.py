"""One small hostile file cannot cost the machine a gigabyte: each picture below is a few kilobytes that
opens as 36 megapixels (under the default 40 MP limit), decoded in a child process of its own, whose peak
resident memory is read from the kernel (Pillow's allocations included, which tracemalloc misses)."""

from __future__ import annotations

import sys

import pytest

from bench.decode_memory import hostile_file, measure

SIDE = 6000
BUDGET_MIB = 300  # before reduction on decode: 964 (16-bit grey), 586 (RGBA), 380 (palette with alpha)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak from Linux's /proc")
@pytest.mark.parametrize("kind", ["grey16", "rgba", "palette_alpha"])
def test_decoding_a_hostile_picture_stays_within_the_memory_budget(kind, tmp_path):
    path = tmp_path / f"{kind}.png"
    path.write_bytes(hostile_file(kind, SIDE))
    assert path.stat().st_size < 200 * 1024  # small on disk: the attack
    result = measure(path, "16")
    assert result["growth_mib"] < BUDGET_MIB, result
    assert result["kept"] == [1344, 1344]  # what the model reads at 16 crops, not 6000 x 6000
