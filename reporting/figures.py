"""What every picture of reporting/ shares: a matplotlib figure on the Agg canvas (no pyplot, no global
backend change) or a PIL image, written atomically as PNG; PIL's font."""
from __future__ import annotations

import io

from PIL import Image, ImageFont

from utils import atomic_io


def font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def fit_image(image: Image.Image, size: tuple[int, int], pad: tuple) -> Image.Image:
    """`image` scaled to fit (height, width), centred on a `pad`-coloured canvas of that size."""
    height, width = size
    canvas = Image.new('RGB', (width, height), pad)
    scale = min(width / image.width, height / image.height)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                           Image.Resampling.BICUBIC)
    canvas.paste(resized, ((width - resized.width) // 2, (height - resized.height) // 2))
    return canvas


def save_image(image: Image.Image, path: str) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format='PNG', compress_level=1)  # fast; these pictures are small
    atomic_io.write_bytes(path, buffer.getvalue())


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png')
    atomic_io.write_bytes(path, buffer.getvalue())
