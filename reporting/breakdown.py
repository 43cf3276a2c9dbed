"""A protocol's breakdowns as files: breakdown_<MODE>_{cameras,views,hours}.csv and the camera heatmap.

The tables come from the evaluator (evaluation/breakdown.py). mAP and Rank-1 are fractions (0-1) with six
decimals, left empty where a cell has no valid query (no positive in that gallery after the removal rule).
The heatmap shows mAP per query camera (rows) and gallery camera (columns), cameras grouped by view (sky,
then ground), the number in each cell being its valid queries.
"""
from __future__ import annotations

import csv
import io
import os

import numpy as np
from PIL import Image, ImageDraw

from datasets import camera_name, view_name
from evaluation.breakdown import GroupTable, PairTable
from reporting.figures import font, save_image
from utils import atomic_io
from utils.vocabulary import BREAKDOWN_COLUMNS, SKY, breakdown_file, breakdown_heatmap_file

EMPTY_CELL = (215, 215, 215)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
CELL = 30  # pixels per heatmap cell


def _fraction(value: float) -> str:
    return '' if np.isnan(value) else f'{value:.6f}'


def hour_name(hour: int) -> str:
    return 'unknown' if hour < 0 else str(int(hour))


def pair_rows(table: PairTable, name) -> list[list[str]]:
    """CSV rows (without the header) of a pair table, labels spelled by `name(label)`."""
    rows, mAP, rank1 = [], table.mAP, table.rank1
    for i, query_group in enumerate(table.query_groups):
        for j, gallery_group in enumerate(table.gallery_groups):
            rows.append([name(query_group), name(gallery_group), str(table.queries[i]), str(table.valid[i, j]),
                         _fraction(mAP[i, j]), _fraction(rank1[i, j])])
    return rows


def group_rows(table: GroupTable, name) -> list[list[str]]:
    mAP, rank1 = table.mAP, table.rank1
    return [[name(group), str(table.queries[i]), str(table.valid[i]), _fraction(mAP[i]), _fraction(rank1[i])]
            for i, group in enumerate(table.groups)]


def _write_csv(path: str, header: tuple, rows: list) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)
    atomic_io.write_text(path, buffer.getvalue())


def camera_order(cameras, camera_views: dict) -> list[int]:
    """Cameras grouped by view (sky first, then ground, then any other), by id within a view."""
    def key(camid):
        view = camera_views.get(int(camid), -1)
        return (0 if view == SKY else 1 + (view < 0), view, int(camid))
    return sorted((int(c) for c in cameras), key=key)


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """uint8 RGB of viridis at values in 0-1; EMPTY_CELL where NaN."""
    from matplotlib import colormaps  # a colour table only: no figure is made
    rgb = (255 * colormaps['viridis'](np.nan_to_num(values))[..., :3]).round().astype(np.uint8)
    rgb[np.isnan(values)] = EMPTY_CELL
    return rgb


def _centred(draw: ImageDraw.ImageDraw, xy: tuple, text: str, text_font, fill=TEXT) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=text_font)
    draw.text((xy[0] - (right - left) / 2 - left, xy[1] - (bottom - top) / 2 - top), text, fill=fill, font=text_font)


def _vertical(canvas: Image.Image, xy: tuple, text: str, text_font) -> None:
    """`text` turned 90 degrees, centred on xy."""
    probe = ImageDraw.Draw(canvas).textbbox((0, 0), text, font=text_font)
    strip = Image.new('RGB', (probe[2] + 2, probe[3] + 2), BACKGROUND)
    ImageDraw.Draw(strip).text((1, 1), text, fill=TEXT, font=text_font)
    strip = strip.rotate(90, expand=True)
    canvas.paste(strip, (int(xy[0] - strip.width / 2), int(xy[1] - strip.height / 2)))


def plot_camera_heatmap(table: PairTable, camera_views: dict, path: str, title: str,
                        dataset_name: str) -> tuple[list[str], list[str]]:
    """mAP of each query camera (row) against each gallery camera (column), cameras grouped by view
    (white lines between the groups), the valid queries written in each cell; grey where a cell has none.
    Drawn with PIL: the report of every evaluation writes one per protocol. Returns (row, column) labels."""
    rows = camera_order(table.query_groups, camera_views)
    columns = camera_order(table.gallery_groups, camera_views)
    row_index = {int(c): i for i, c in enumerate(table.query_groups)}
    column_index = {int(c): j for j, c in enumerate(table.gallery_groups)}
    ordered = np.ix_([row_index[c] for c in rows], [column_index[c] for c in columns])
    mAP, valid = table.mAP[ordered], table.valid[ordered]
    row_labels = [camera_name(dataset_name, c) for c in rows]
    column_labels = [camera_name(dataset_name, c) for c in columns]

    label_font, small_font, title_font = font(11), font(10), font(12)
    measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    label_width = max(measure.textbbox((0, 0), label, font=label_font)[2] for label in row_labels + column_labels)
    left = 58 + label_width  # view name, axis name, camera names
    top = 52                 # title, view names
    grid_width, grid_height = CELL * len(columns), CELL * len(rows)
    bar_left = left + grid_width + 18
    width = max(bar_left + 70, 16 + measure.textbbox((0, 0), title, font=title_font)[2])
    height = top + grid_height + label_width + 34
    canvas = Image.new('RGB', (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), title, fill=TEXT, font=title_font)

    colours = _heat_colours(mAP)
    for i in range(len(rows)):
        for j in range(len(columns)):
            x, y = left + j * CELL, top + i * CELL
            colour = tuple(int(v) for v in colours[i, j])
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill=colour)
            dark = sum(colour) < 3 * 128
            _centred(draw, (x + CELL / 2, y + CELL / 2), str(valid[i, j]), small_font,
                     (255, 255, 255) if dark else TEXT)
    for k, label in enumerate(column_labels):
        _vertical(canvas, (left + (k + 0.5) * CELL, top + grid_height + 6 + label_width / 2), label, label_font)
    for k, label in enumerate(row_labels):
        right = draw.textbbox((0, 0), label, font=label_font)[2]
        draw.text((left - 6 - right, top + (k + 0.5) * CELL - 7), label, fill=TEXT, font=label_font)
    _centred(draw, (left + grid_width / 2, height - 12), 'gallery camera', label_font)
    _vertical(canvas, (34, top + grid_height / 2), 'query camera', label_font)

    for cameras, along_columns in ((columns, True), (rows, False)):  # view groups: names and separators
        views = [camera_views.get(c, -1) for c in cameras]
        starts = [k for k in range(len(views)) if k == 0 or views[k] != views[k - 1]]
        for start, end in zip(starts, starts[1:] + [len(views)]):
            name = view_name(dataset_name, views[start]) if views[start] >= 0 else 'view ?'
            if along_columns:
                if start:
                    draw.line((left + start * CELL, top, left + start * CELL, top + grid_height - 1),
                              fill=BACKGROUND, width=3)
                _centred(draw, (left + (start + end) / 2 * CELL, top - 10), name, label_font)
            else:
                if start:
                    draw.line((left, top + start * CELL, left + grid_width - 1, top + start * CELL),
                              fill=BACKGROUND, width=3)
                _vertical(canvas, (14, top + (start + end) / 2 * CELL), name, label_font)

    steps = np.linspace(1, 0, grid_height)[:, None]  # colour bar, 100 % at the top
    bar = np.repeat(_heat_colours(steps), 14, axis=1)
    canvas.paste(Image.fromarray(bar, 'RGB'), (bar_left, top))
    for value in (0, 25, 50, 75, 100):
        y = top + (1 - value / 100) * (grid_height - 1)
        draw.line((bar_left + 14, y, bar_left + 18, y), fill=TEXT)
        draw.text((bar_left + 21, y - 6), str(value), fill=TEXT, font=small_font)
    _vertical(canvas, (bar_left + 56, top + grid_height / 2), 'mAP (%)', label_font)
    save_image(canvas, path)
    return row_labels, column_labels


def write_breakdowns(output_dir: str, mode: str, tables: dict, query: dict, gallery: dict,
                     dataset_name: str) -> list[str]:
    """The CSV file of each table in `tables` ({'cameras', 'views'[, 'hours']}) and the camera heatmap;
    returns the paths written. query / gallery: the protocol's columns (camids, views)."""
    written = []
    names = {'cameras': lambda c: camera_name(dataset_name, c), 'views': lambda v: view_name(dataset_name, v),
             'hours': hour_name}
    for kind, table in tables.items():
        path = os.path.join(output_dir, breakdown_file(mode, kind))
        rows = group_rows(table, names[kind]) if isinstance(table, GroupTable) else pair_rows(table, names[kind])
        _write_csv(path, BREAKDOWN_COLUMNS[kind], rows)
        written.append(path)
    if 'cameras' in tables:
        camera_views = {}
        for columns in (gallery, query):  # a camera's view as its images have it
            for camid, view in zip(columns['camids'], columns['views']):
                camera_views.setdefault(int(camid), int(view))
        path = os.path.join(output_dir, breakdown_heatmap_file(mode))
        plot_camera_heatmap(tables['cameras'], camera_views, path,
                            f'{mode}: mAP by query and gallery camera (number: valid queries)', dataset_name)
        written.append(path)
    return written
