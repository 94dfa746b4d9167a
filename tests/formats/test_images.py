import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from formats.images import ImageRejected, ResizeSpec, decode_bgr, process_image
from tests.bad_images import _photo, _save, awkward_files


@pytest.mark.parametrize("name,data,status,size", awkward_files(), ids=lambda v: v if isinstance(v, str) else "")
def test_awkward_file_gets_its_status(name, data, status, size):
    spec = ResizeSpec(image_size=32, min_image_size=16)
    if status == "success":
        out = process_image(data, spec)
        assert out.size == size
        decoded = np.asarray(Image.open(__import__("io").BytesIO(out.data)))
        assert decoded.shape == (size[1], size[0], 3)
    else:
        with pytest.raises(ImageRejected) as err:
            process_image(data, spec)
        assert err.value.reason == status


def test_exif_rotation_is_applied_before_resizing():
    exif = Image.Exif()
    exif[0x0112] = 6
    img = Image.new("RGB", (64, 48), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 32, 48))  # left half white
    rgb = decode_bgr(_save(img, "PNG", exif=exif), ResizeSpec(resize_mode="none"))[0]
    # rotated 90 degrees clockwise: the white left half becomes the top half
    assert rgb.shape == (64, 48, 3)
    assert rgb[:28].mean() > 200 and rgb[36:].mean() < 50


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgb = decode_bgr(_save(img, "PNG"), ResizeSpec(resize_mode="none"))[0]
    assert rgb.min() == 255


def test_sixteen_bit_range_is_scaled_to_eight_bits():
    arr = np.full((20, 20), 65535, np.uint16)
    arr[:10] = 0
    rgb = decode_bgr(_save(Image.fromarray(arr), "PNG"), ResizeSpec(resize_mode="none"))[0]
    assert rgb[:10].max() == 0 and rgb[10:].min() == 255


@pytest.mark.parametrize("mode,expected", [
    ("none", (64, 48)), ("keep_ratio", (43, 32)), ("center_crop", (32, 32)), ("border", (32, 32)),
])
def test_resize_modes(mode, expected):
    out = process_image(_save(_photo(64, 48), "PNG"), ResizeSpec(image_size=32, resize_mode=mode, encode_format="png"))
    assert out.size == expected
    img = np.asarray(Image.open(__import__("io").BytesIO(out.data)))
    if mode == "border":  # 32x24 picture centred on black bars of 4 rows each
        assert img[:4].max() == 0 and img[-4:].max() == 0 and img[4:28].mean() > 20


def test_resize_only_if_bigger_keeps_small_images():
    out = process_image(_save(_photo(64, 48), "PNG"), ResizeSpec(image_size=100, resize_only_if_bigger=True))
    assert out.size == (64, 48)


def test_aspect_ratio_filter():
    with pytest.raises(ImageRejected) as err:
        process_image(_save(_photo(160, 16), "PNG"), ResizeSpec(image_size=16, max_aspect_ratio=4))
    assert err.value.reason == "bad_aspect_ratio"


@pytest.mark.parametrize("fmt,magic", [("jpg", b"\xff\xd8"), ("png", b"\x89PNG"), ("webp", b"RIFF")])
def test_output_formats(fmt, magic):
    out = process_image(_save(_photo(64, 48), "PNG"), ResizeSpec(image_size=32, encode_format=fmt))
    assert out.data.startswith(magic) and out.extension == fmt


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])  # the OpenCV path and the Pillow path
def test_colours_survive_the_round_trip(fmt):
    img = Image.new("RGB", (64, 48), (220, 30, 10))
    out = process_image(_save(img, fmt), ResizeSpec(image_size=32, encode_format="png"))
    r, g, b = np.asarray(Image.open(__import__("io").BytesIO(out.data))).reshape(-1, 3).mean(0)
    assert r > 200 and g < 50 and b < 30


def test_jpeg_decoded_at_reduced_size_matches_a_full_decode_then_resize():
    import cv2

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
    data = _save(img, "JPEG", quality=95)
    reduced, original, _ = decode_bgr(data, ResizeSpec(image_size=256))
    assert original == (640, 480) and reduced.shape == (300, 400, 3)  # libjpeg-turbo's 5/8 scale
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    expected = cv2.resize(full, (400, 300), interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(float) - expected).mean() < 3
    out = process_image(data, ResizeSpec(image_size=256))
    assert out.original_size == (640, 480) and out.size == (341, 256)


def test_importing_and_decoding_change_no_process_wide_setting():
    """cv2's thread count and Pillow's bomb limit are set by the shard and embed tasks, not on import."""
    code = ("import cv2; from PIL import Image; before = (cv2.getNumThreads(), Image.MAX_IMAGE_PIXELS)\n"
            "import formats.images as im, numpy as np\n"
            "ok, png = cv2.imencode('.png', np.zeros((8, 8, 3), np.uint8))\n"
            "im.decode_bgr(png.tobytes(), im.ResizeSpec(max_image_pixels=64))\n"
            "assert (cv2.getNumThreads(), Image.MAX_IMAGE_PIXELS) == before, (before, cv2.getNumThreads())\n"
            "im.configure_decoders(1000)\n"
            "assert (cv2.getNumThreads(), Image.MAX_IMAGE_PIXELS) == (1, 1000)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr


def test_an_image_over_the_pixel_limit_is_refused_from_its_header():
    ok, png = cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ImageRejected, match="too_many_pixels: 40x40"):
        decode_bgr(png.tobytes(), ResizeSpec(max_image_pixels=1599))
    assert decode_bgr(png.tobytes(), ResizeSpec(max_image_pixels=1600))[1] == (40, 40)
