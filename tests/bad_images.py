"""Files of every awkward kind the shard job must survive, written as real bytes.

Each entry is `(file name, bytes, expected status, expected output size or None)`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    return Image.fromarray(arr).resize((w, h), Image.BILINEAR)


def awkward_files() -> list[tuple[str, bytes, str, tuple[int, int] | None]]:
    """Sizes are after keep_ratio resizing to a shorter side of 32."""
    good = _save(_photo(64, 48), "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display: a 64x48 file shows as 48x64
    rgba = _photo(64, 48).convert("RGBA")
    rgba.putalpha(128)
    palette_alpha = _photo(64, 48).convert("P")
    palette_alpha.info["transparency"] = 0
    sixteen = Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20))
    bomb = Image.new("1", (12_000, 12_000))
    return [
        ("a_good.jpg", good, "success", (43, 32)),
        ("b_empty.jpg", b"", "empty", None),
        ("c_truncated.jpg", good[: len(good) // 2], "truncated", None),
        ("d_text.jpg", b"this is not an image at all\n" * 10, "not_an_image", None),
        ("e_bomb.png", _save(bomb, "PNG"), "too_many_pixels", None),
        ("f_exif_rotated.jpg", _save(_photo(64, 48), "JPEG", exif=exif), "success", (32, 43)),
        ("g_gray.jpg", _save(_photo(64, 48).convert("L"), "JPEG"), "success", (43, 32)),
        ("h_palette.png", _save(_photo(64, 48).convert("P"), "PNG"), "success", (43, 32)),
        ("i_palette_alpha.png", _save(palette_alpha, "PNG", transparency=0), "success", (43, 32)),
        ("j_cmyk.jpg", _save(_photo(64, 48).convert("CMYK"), "JPEG"), "success", (43, 32)),
        ("k_16bit.png", _save(sixteen, "PNG"), "success", (43, 32)),
        ("l_rgba.png", _save(rgba, "PNG"), "success", (43, 32)),
        ("m_webp.webp", _save(_photo(64, 48), "WEBP"), "success", (43, 32)),
        ("n_tiny.png", _save(_photo(8, 8), "PNG"), "too_small", None),
        ("o_bmp.bmp", _save(_photo(64, 48), "BMP"), "success", (43, 32)),
    ]
