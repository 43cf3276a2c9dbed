"""Attention maps (model/attention_maps.py) as pictures: an image with its map overlaid, and a grid of them.

The map (0-1, in the model's input pixels) is stretched over the image as it was read, coloured with the
'jet' scale (blue: little, red: most) and blended half and half with the image.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from reporting.figures import fit_image, font, save_image

BACKGROUND = (255, 255, 255)
PAD = (210, 210, 210)
TEXT = (20, 20, 20)
MIN_HEIGHT = 256  # a picture of one image is enlarged to at least this height


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """uint8 RGB of the 'jet' scale at values in 0-1."""
    from matplotlib import colormaps  # a colour table only: no figure is made
    return (255 * colormaps['jet'](np.clip(heat, 0, 1))[..., :3]).round().astype(np.uint8)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """`image` with the map `heat` ([h, w], 0-1, any size) stretched over it and blended in."""
    stretched = Image.fromarray(np.asarray(heat, dtype=np.float32), mode='F').resize(image.size, Image.BILINEAR)
    colours = Image.fromarray(heat_colours(np.asarray(stretched)), 'RGB')
    return Image.blend(image.convert('RGB'), colours, alpha)


def enlarged(image: Image.Image) -> Image.Image:
    """A small re-ID crop enlarged by a whole factor, so that the picture can be looked at."""
    factor = max(1, -(-MIN_HEIGHT // image.height))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.BICUBIC)


def write_overlay(image: Image.Image, heat: np.ndarray, path: str) -> None:
    save_image(overlay(enlarged(image), heat), path)


def _shortened(draw: ImageDraw.ImageDraw, text: str, text_font, width: int) -> str:
    if draw.textlength(text, font=text_font) <= width:
        return text
    while text and draw.textlength(text + '…', font=text_font) > width:
        text = text[:-1]
    return text + '…'


def write_grid(images: list[Image.Image], heats: list[np.ndarray], captions: list[str], title: str, path: str,
               per_row: int = 8, cell: tuple[int, int] = (192, 96)) -> tuple[int, int]:
    """Each image above its overlay, a caption under the pair, `per_row` pairs a row. Returns (w, h)."""
    height, width = cell
    gap, text_height, margin, title_height = 8, 16, 10, 24
    columns = min(per_row, len(images))
    rows = -(-len(images) // per_row)
    pair_height = 2 * height + gap + text_height
    size = (2 * margin + columns * (width + gap) - gap,
            2 * margin + title_height + rows * (pair_height + gap) - gap)
    canvas = Image.new('RGB', size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, margin), title, fill=TEXT, font=font(13))
    caption_font = font(10)
    for k, (image, heat, caption) in enumerate(zip(images, heats, captions)):
        x = margin + (k % per_row) * (width + gap)
        y = margin + title_height + (k // per_row) * (pair_height + gap)
        canvas.paste(fit_image(image.convert('RGB'), cell, PAD), (x, y))
        canvas.paste(fit_image(overlay(image, heat), cell, PAD), (x, y + height + gap // 2))
        draw.text((x, y + 2 * height + gap), _shortened(draw, caption, caption_font, width), fill=TEXT,
                  font=caption_font)
    save_image(canvas, path)
    return size
