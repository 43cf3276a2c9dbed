"""Images as they come: datasets.bases.read_image turns each into 8-bit RGB or refuses it in one line."""
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from datasets.bases import ImageDataset, read_image
from utils.errors import UserError

RED = (255, 0, 0)


def png_rgb16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG, written by hand (PIL cannot write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
    height, width, _ = pixels.shape
    rows = b''.join(b'\x00' + pixels[y].astype('>u2').tobytes() for y in range(height))
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 16, 2, 0, 0, 0))
                     + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))
    return path


def red_palette_image(size) -> Image.Image:
    image = Image.new('P', size, 1)
    image.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)
    return image


def rotated_jpeg(path: Path) -> Path:
    """A 64x32 (height x width) JPEG, red on top, whose EXIF says 'rotate 90 degrees to display'."""
    pixels = np.zeros((64, 32, 3), np.uint8)
    pixels[:32] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    return path


def truncated_jpeg(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) * 2 // 3])
    return path


def write_odd_image(kind: str, path_stem: Path) -> Path:
    """One image of each kind a user may have; returns its path (the suffix follows the format)."""
    stem = str(path_stem)
    red = Image.new('RGB', (32, 64), RED)
    if kind == 'greyscale':
        return _save(red.convert('L'), stem + '.jpg')
    if kind == 'palette':
        return _save(red_palette_image((32, 64)), stem + '.png')
    if kind == 'rgba':
        return _save(Image.new('RGBA', (32, 64), (*RED, 0)), stem + '.png')
    if kind == 'cmyk':
        return _save(Image.new('CMYK', (32, 64), (0, 255, 255, 0)), stem + '.jpg')
    if kind == 'grey16':
        return _save(Image.fromarray(np.full((64, 32), 257 * 200, np.uint16)), stem + '.png')
    if kind == 'rgb16':
        return png_rgb16(Path(stem + '.png'), np.tile(np.array([65535, 0, 257 * 100], np.uint16), (64, 32, 1)))
    if kind == 'exif_rotated':
        return rotated_jpeg(Path(stem + '.jpg'))
    if kind == 'one_pixel':
        return _save(Image.new('RGB', (1, 1), RED), stem + '.png')
    if kind == 'extreme_aspect':
        return _save(Image.new('RGB', (1, 400), RED), stem + '.png')
    if kind == 'truncated_jpeg':
        return truncated_jpeg(Path(stem + '.jpg'))
    raise ValueError(kind)


ODD_KINDS = ('greyscale', 'palette', 'rgba', 'cmyk', 'grey16', 'rgb16', 'exif_rotated', 'one_pixel',
             'extreme_aspect', 'truncated_jpeg')


def _save(image: Image.Image, path: str) -> Path:
    image.save(path)
    return Path(path)


@pytest.mark.parametrize('kind', ODD_KINDS)
def test_every_kind_loads_as_8_bit_rgb(tmp_path, kind):
    image = read_image(str(write_odd_image(kind, tmp_path / 'image')))
    pixels = np.asarray(image)
    assert image.mode == 'RGB' and pixels.dtype == np.uint8 and pixels.ndim == 3


@pytest.mark.parametrize('kind, expected', [
    ('greyscale', (76, 76, 76)),  # PIL's luma of pure red, JPEG-rounded below
    ('palette', RED),
    ('rgba', RED),  # alpha is dropped, the colour kept (the published convert('RGB'))
    ('cmyk', RED),
    ('grey16', (200, 200, 200)),  # scaled from 0-65535; PIL's convert alone would clip it to 255
    ('rgb16', (255, 0, 100)),
    ('one_pixel', RED),
])
def test_pixel_values(tmp_path, kind, expected):
    pixels = np.asarray(read_image(str(write_odd_image(kind, tmp_path / 'image'))))
    assert np.abs(pixels[0, 0].astype(int) - expected).max() <= 2


def test_exif_orientation_is_not_applied(tmp_path):
    image = read_image(str(rotated_jpeg(tmp_path / 'rotated.jpg')))
    assert image.size == (32, 64)  # as stored, not turned to 64 x 32
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[0, 16] - RED).max() < 10 and pixels[63, 16].max() < 10


def test_truncated_jpeg_loads_like_the_published_code_and_the_switch_is_restored(tmp_path):
    path = truncated_jpeg(tmp_path / 'cut.jpg')
    with pytest.raises(OSError, match='truncated'):
        Image.open(path).load()  # what PIL alone does
    assert read_image(str(path)).size == (32, 64)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # scoped to that one decoding


def test_16_bit_tiff_and_non_ascii_names(tmp_path):
    path = tmp_path / 'пешеход_航拍.tif'
    Image.fromarray(np.full((8, 4), 65535, np.uint16)).save(path)
    assert np.asarray(read_image(str(path)))[0, 0].tolist() == [255, 255, 255]


def float_tiff(path: Path) -> Path:
    Image.fromarray(np.ones((4, 4), np.float32)).save(path.with_suffix('.tif'))
    return path.with_suffix('.tif')


def garbage(path: Path) -> Path:
    path.write_bytes(b'garbage, not an image')
    return path


def jpeg_headers_only(path: Path) -> Path:
    Image.new('RGB', (32, 64)).save(path)
    path.write_bytes(path.read_bytes()[:200])  # nothing decodable, even with LOAD_TRUNCATED_IMAGES
    return path


@pytest.mark.parametrize('make, reason', [
    (float_tiff, '32-bit floating-point pixels'),
    (garbage, 'cannot identify image file'),
    (jpeg_headers_only, 'Truncated File Read'),
])
def test_what_cannot_be_read_is_refused_in_one_line(tmp_path, make, reason):
    path = make(tmp_path / 'bad.jpg')
    with pytest.raises(UserError) as refused:
        read_image(str(path))
    message = str(refused.value)
    assert message.startswith(f"cannot read image '{path}'") and reason in message and '\n' not in message


def test_loader_item_of_each_kind(tmp_path):
    paths = [str(write_odd_image(kind, tmp_path / kind)) for kind in ODD_KINDS]
    dataset = ImageDataset([(path, 0, 0, 0) for path in paths])
    for index, path in enumerate(paths):
        tensor, *_, item_path = dataset[index]
        assert item_path == path and tensor.shape[0] == 3
