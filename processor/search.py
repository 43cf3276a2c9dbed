"""Search any folders with a trained model: image lists, per-image labels, chunked top-k ranking, outputs.

Used by search_clipreid.py. Labels (camera, view, person) per image are optional; they come from the
file names when a known dataset naming fits every image, or from a CSV.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from datasets.agreid import parse_agreid_name
from datasets.bases import IMAGE_EXTENSIONS, list_image_files
from datasets.market1501 import parse_market_name
from datasets.mssl import parse_mssl_name
from evaluation.rank import query_distances
from evaluation.ranked_lists import RankedQuery
from model.feature_api import SIDE_INFO_CHOICES
from reporting.visualize import draw_ranked_lists
from utils import atomic_io
from utils.errors import UserError
from utils.vocabulary import VIEW_IDS

UNKNOWN = -1
NAMINGS = {'mssl': parse_mssl_name, 'market1501': parse_market_name, 'agreid': parse_agreid_name}
CSV_COLUMNS = ('image', 'camera', 'view', 'person')


def list_images(path: str, what: str) -> list[str]:
    """One image file, or the image files directly inside a folder (sorted)."""
    if os.path.isfile(path):
        if not path.lower().endswith(IMAGE_EXTENSIONS):
            raise UserError(f"{what} '{path}' is not a {'/'.join(IMAGE_EXTENSIONS)} image")
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"{what} '{path}' does not exist")
    images = list_image_files(path)
    if not images:
        raise UserError(f"{what} folder '{path}' holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    return images


@dataclass
class Labels:
    """Per image: camera id, view id and person (-1 / None where unknown); `source` says where they came from."""
    cameras: list[int]
    views: list[int]
    persons: list[str | None]
    source: str = 'none'
    notes: list[str] = field(default_factory=list)

    @property
    def persons_known(self) -> bool:
        return bool(self.persons) and all(p is not None for p in self.persons)


def unknown_labels(n: int) -> Labels:
    return Labels([UNKNOWN] * n, [UNKNOWN] * n, [None] * n)


def labels_from_names(paths: list[str], meta: dict) -> Labels:
    """Labels parsed from the file names, by the first known naming that fits every image; else unknown.

    Cameras are kept only when the naming is that of the model's training set (camera ids of another
    dataset mean other cameras); views and persons are kept from any naming.
    """
    for naming, parse in NAMINGS.items():
        try:
            parsed = [parse(os.path.basename(path)) for path in paths]
        except UserError:
            continue
        same_cameras = naming == meta.get('dataset')
        labels = Labels([camid if same_cameras else UNKNOWN for _, camid, _ in parsed],
                        [viewid for _, _, viewid in parsed],
                        [None if pid == -1 else _person_text(pid) for pid, _, _ in parsed],
                        source=f"{naming} file names")
        if not same_cameras:
            labels.notes.append(f"file names follow the {naming} naming but the model was trained on "
                                f"'{meta.get('dataset')}': their cameras are not the model's, so only views are used")
        return labels
    return unknown_labels(len(paths))


def add_label_arguments(parser) -> None:
    """--labels and --side-info, as search_clipreid.py and tools/attention_maps.py take them (image_labels)."""
    parser.add_argument('--labels', default='auto',
                        help="'auto' (from file names of a known dataset naming), 'none', or a CSV with columns "
                             "image and any of camera, view, person")
    parser.add_argument('--side-info', default='mean', choices=SIDE_INFO_CHOICES,
                        help='what unknown camera/view labels do with an SIE model (default mean)')


def image_labels(source: str, paths: list[str], meta: dict, table: dict | None) -> Labels:
    """The labels of `paths` as --labels `source` asks: 'none', 'auto' (file names) or a CSV (`table`, read
    by read_label_csv)."""
    if source == 'none':
        return unknown_labels(len(paths))
    if table is not None:
        return labels_from_csv(paths, table, meta, source)
    return labels_from_names(paths, meta)


def _person_text(pid) -> str:
    return 'P{}T{}A{}'.format(*pid) if isinstance(pid, tuple) else str(pid)


def read_label_csv(path: str) -> dict:
    """{image key: {'camera', 'view', 'person'}} from a CSV with an `image` column (a file name or a path)
    and any of `camera`, `view`, `person`; empty cells are unknown."""
    if not os.path.isfile(path):
        raise UserError(f"--labels CSV '{path}' does not exist")
    try:
        with open(path, newline='') as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or '').strip(): (v or '').strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"--labels CSV '{path}' cannot be read: {err}") from None
    if 'image' not in columns:
        raise UserError(f"--labels CSV '{path}' has no 'image' column (its columns: {', '.join(columns) or 'none'}; "
                        f"expected image and any of camera, view, person)")
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise UserError(f"--labels CSV '{path}' has the unknown column(s) {', '.join(unknown)}; "
                        f"known: {', '.join(CSV_COLUMNS)}")
    return {row['image']: row for row in rows if row.get('image')}


def labels_from_csv(paths: list[str], table: dict, meta: dict, csv_path: str) -> Labels:
    cameras, views, persons = [], [], []
    camera_lookup = {name.lower(): i for i, name in enumerate(meta.get('camera_names') or [])}
    view_lookup = {name.lower(): i for i, name in enumerate(meta.get('view_names') or [])} or dict(VIEW_IDS)
    for image in paths:
        row = table.get(image) or table.get(os.path.basename(image)) or {}
        cameras.append(_lookup(row.get('camera', ''), camera_lookup, meta.get('camera_num', 0), 'camera',
                               csv_path, image))
        views.append(_lookup(row.get('view', ''), view_lookup, meta.get('view_num', 0), 'view', csv_path, image))
        persons.append(row.get('person') or None)
    return Labels(cameras, views, persons, source=f"--labels CSV '{csv_path}'")


def _lookup(value: str, names: dict, count: int, kind: str, csv_path: str, image: str) -> int:
    if value == '':
        return UNKNOWN
    if value.lower() in names:
        return names[value.lower()]
    if value.lstrip('-').isdigit() and -1 <= int(value) < count:
        return int(value)
    raise UserError(f"--labels CSV '{csv_path}': {kind} '{value}' of {os.path.basename(image)} is not one of the "
                    f"model's {kind}s ({', '.join(names) or f'ids 0-{count - 1}'})")


def top_k(qf: torch.Tensor, gf: torch.Tensor, k: int, chunk_size: int = 4096,
          device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances [Nq, k'], gallery indices [Nq, k']) of the k nearest gallery features of each query by
    squared Euclidean distance (the evaluator's), equal distances in gallery order; k' = min(k, Ng).
    Computed on `device` (default: where `qf` is), where the results are.

    Memory: chunk_size queries x chunk_size gallery distances at a time, never Nq x Ng. Each gallery
    block gives its k nearest (torch.topk), merged with the best so far.
    """
    if device is not None:
        qf, gf = qf.to(device), gf.to(device)
    k = min(k, gf.shape[0])
    g_sq = (gf * gf).sum(1)
    best_dist, best_index = [], []
    for q_start in range(0, qf.shape[0], chunk_size):
        q = qf[q_start:q_start + chunk_size]
        q_sq = (q * q).sum(1)
        dist = torch.empty(q.shape[0], 0, dtype=qf.dtype, device=qf.device)
        index = torch.empty(q.shape[0], 0, dtype=torch.long, device=qf.device)
        for g_start in range(0, gf.shape[0], chunk_size):
            g_stop = min(g_start + chunk_size, gf.shape[0])
            block = query_distances(q, q_sq, gf[g_start:g_stop], g_sq[g_start:g_stop])
            values, position = torch.topk(block, min(k, block.shape[1]), dim=1, largest=False, sorted=False)
            dist, index = _by_distance_then_index(torch.cat([dist, values], 1), torch.cat([index, position + g_start], 1))
            dist, index = dist[:, :k], index[:, :k]
        best_dist.append(dist)
        best_index.append(index)
    return torch.cat(best_dist), torch.cat(best_index)


def _by_distance_then_index(dist: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(index, dim=1, stable=True)
    dist, index = dist.gather(1, order), index.gather(1, order)
    order = torch.argsort(dist, dim=1, stable=True)
    return dist.gather(1, order), index.gather(1, order)


def _columns(paths: list[str], labels: Labels) -> dict:
    return {'paths': np.array(paths), 'camids': np.array(labels.cameras, dtype=np.int64),
            'views': np.array(labels.views, dtype=np.int64),
            'pids': np.array([p if p is not None else '' for p in labels.persons])}


def write_outputs(output_dir: str, names: dict, query: list[str], gallery: list[str], q_labels: Labels,
                  g_labels: Labels, qf: torch.Tensor, gf: torch.Tensor, dist: torch.Tensor, index: torch.Tensor,
                  info: dict, picture_queries: int, dataset_name: str) -> list[str]:
    """The ranked lists as CSV and JSON, the features as .npz and the ranked-list picture; paths written."""
    known = q_labels.persons_known and g_labels.persons_known
    dist, index = dist.cpu().numpy(), index.cpu().numpy()
    header = ['query', 'rank', 'gallery', 'distance'] + (['query_person', 'gallery_person', 'match'] if known else [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(header)
    results = []
    for qi, q_path in enumerate(query):
        entries = []
        for rank, (gi, d) in enumerate(zip(index[qi], dist[qi]), start=1):
            row = [q_path, rank, gallery[gi], f'{d:.6f}']
            entry = {'rank': rank, 'gallery': gallery[gi], 'distance': float(d)}
            if known:
                match = q_labels.persons[qi] == g_labels.persons[gi]
                row += [q_labels.persons[qi], g_labels.persons[gi], int(match)]
                entry.update(person=g_labels.persons[gi], match=bool(match))
            writer.writerow(row)
            entries.append(entry)
        record = {'query': q_path, 'camera': q_labels.cameras[qi], 'view': q_labels.views[qi], 'results': entries}
        if q_labels.persons[qi] is not None:
            record['person'] = q_labels.persons[qi]
        results.append(record)
    paths = {key: os.path.join(output_dir, name) for key, name in names.items()}
    atomic_io.write_text(paths['csv'], buffer.getvalue())
    atomic_io.write_text(paths['json'], json.dumps({**info, 'queries': results}, indent=1))
    arrays = dict(query_features=qf.cpu().numpy(), gallery_features=gf.cpu().numpy(),
                  query_paths=np.array(query, dtype=str), gallery_paths=np.array(gallery, dtype=str),
                  query_cameras=np.array(q_labels.cameras, dtype=np.int64),
                  query_views=np.array(q_labels.views, dtype=np.int64),
                  gallery_cameras=np.array(g_labels.cameras, dtype=np.int64),
                  gallery_views=np.array(g_labels.views, dtype=np.int64))
    if known:
        arrays.update(query_persons=np.array(q_labels.persons, dtype=str),
                      gallery_persons=np.array(g_labels.persons, dtype=str))
    atomic_io.savez(paths['npz'], **arrays)
    written = [paths['csv'], paths['json'], paths['npz']]
    if picture_queries > 0:
        ranked = [RankedQuery(query=qi, tag=f'query {qi + 1}', ap=float('nan'), gallery=index[qi],
                              match=(np.array([q_labels.persons[qi] == g_labels.persons[gi] for gi in index[qi]])
                                     if known else np.zeros(len(index[qi]), dtype=bool)),
                              dist=dist[qi]) for qi in range(min(picture_queries, len(query)))]
        topk = index.shape[1]
        title = (f"top-{topk} of {len(gallery)} gallery images for {len(ranked)} queries"
                 + (" (green: same person, red: another)" if known else " (persons unknown; d: distance)"))
        draw_ranked_lists(ranked, _columns(query, q_labels), _columns(gallery, g_labels), paths['picture'],
                          title, dataset_name, topk, identities_known=known)
        written.append(paths['picture'])
    return written
