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

from datasets import camera_name
from evaluation.breakdown import GroupTable, PairTable
from reporting.figures import new_figure, save_figure, view_name
from utils import atomic_io
from utils.vocabulary import BREAKDOWN_COLUMNS, SKY, breakdown_file, breakdown_heatmap_file

EMPTY_CELL = (0.85, 0.85, 0.85)


def _fraction(value: float) -> str:
    return '' if np.isnan(value) else f'{value:.6f}'


def hour_name(hour: int) -> str:
    return 'unknown' if hour < 0 else str(int(hour))


def pair_rows(table: PairTable, name) -> list[list[str]]:
    """CSV rows (without the header) of a pair table, labels spelled by `name(label)`."""
    rows = []
    for i, query_group in enumerate(table.query_groups):
        for j, gallery_group in enumerate(table.gallery_groups):
            rows.append([name(query_group), name(gallery_group), str(table.queries[i]), str(table.valid[i, j]),
                         _fraction(table.mAP[i, j]), _fraction(table.rank1[i, j])])
    return rows


def group_rows(table: GroupTable, name) -> list[list[str]]:
    return [[name(group), str(table.queries[i]), str(table.valid[i]), _fraction(table.mAP[i]),
             _fraction(table.rank1[i])] for i, group in enumerate(table.groups)]


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


def plot_camera_heatmap(table: PairTable, camera_views: dict, path: str, title: str,
                        dataset_name: str) -> tuple[list[str], list[str]]:
    """mAP (%) of each query camera (row) against each gallery camera (column), grouped by view, with
    the valid queries written in each cell; grey where a cell has none. Returns the (row, column) labels."""
    from matplotlib import colormaps

    rows = camera_order(table.query_groups, camera_views)
    columns = camera_order(table.gallery_groups, camera_views)
    row_index = {int(c): i for i, c in enumerate(table.query_groups)}
    column_index = {int(c): j for j, c in enumerate(table.gallery_groups)}
    ordered = np.ix_([row_index[c] for c in rows], [column_index[c] for c in columns])
    mAP, valid = 100 * table.mAP[ordered], table.valid[ordered]

    cell = 0.42
    figure = new_figure(max(4.5, 2.2 + cell * len(columns)), max(3.2, 1.9 + cell * len(rows)))
    axes = figure.add_subplot()
    cmap = colormaps['viridis'].with_extremes(bad=EMPTY_CELL)
    image = axes.imshow(np.ma.masked_invalid(mAP), cmap=cmap, vmin=0, vmax=100, aspect='equal')
    for i in range(len(rows)):
        for j in range(len(columns)):
            dark = not np.isnan(mAP[i, j]) and mAP[i, j] < 55
            axes.text(j, i, str(valid[i, j]), ha='center', va='center', fontsize=7,
                      color='white' if dark else 'black')
    row_labels = [camera_name(dataset_name, c) for c in rows]
    column_labels = [camera_name(dataset_name, c) for c in columns]
    axes.set_xticks(range(len(columns)), column_labels, rotation=90, fontsize=8)
    axes.set_yticks(range(len(rows)), row_labels, fontsize=8)
    axes.set_xlabel('gallery camera')
    axes.set_ylabel('query camera')
    for cameras, line, label in ((columns, axes.axvline, 'x'), (rows, axes.axhline, 'y')):
        views = [camera_views.get(c, -1) for c in cameras]
        starts = [k for k in range(len(views)) if k == 0 or views[k] != views[k - 1]]
        for start, end in zip(starts, starts[1:] + [len(views)]):
            if start:
                line(start - 0.5, color='white', linewidth=2.5)
            middle, text = (start + end - 1) / 2, view_name(views[start])
            if label == 'x':
                axes.text(middle, -0.7, text, ha='center', va='bottom', fontsize=9, fontweight='bold')
            else:
                axes.text(-2.2, middle, text, ha='right', va='center', fontsize=9, fontweight='bold', rotation=90)
    axes.set_title(title, fontsize=9, pad=18)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.03)
    colorbar.set_label('mAP (%)', fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    return row_labels, column_labels


def write_breakdowns(output_dir: str, mode: str, tables: dict, query: dict, gallery: dict,
                     dataset_name: str) -> list[str]:
    """The CSV file of each table in `tables` ({'cameras', 'views'[, 'hours']}) and the camera heatmap;
    returns the paths written. query / gallery: the protocol's columns (camids, views)."""
    written = []
    names = {'cameras': lambda c: camera_name(dataset_name, c), 'views': view_name, 'hours': hour_name}
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
