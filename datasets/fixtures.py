"""Tiny stand-ins for the aerial-ground datasets in their published layouts, for tests and trials.

    python -m datasets.fixtures NAME OUT_DIR [--train-ids 8] [--test-ids 4] [--seed 0]

NAME: agreid, agreid_v2, cargo, g2aps_reid, lagper or csv. The folders, file names and protocol lists
follow each download (README.md, "Datasets"); the images are the synthetic people of
datasets/synthetic_mssl.py, drawn by a ground or a sky camera style. Nothing is downloaded, and the
output is a deterministic function of the arguments. DATASETS.ROOT_DIR is OUT_DIR for every NAME.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from utils.errors import UserError, exit_on_user_error

from .synthetic_mssl import JPEG_QUALITY, SKY_CAMERAS, GROUND_CAMERAS, _render, _sample_cameras, _sample_identity


class _Painter:
    """Draws identity `pid` as seen by a ground or sky camera style (a few styles per view)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        styles = _sample_cameras(self.rng)
        self.styles = {True: [styles[c] for c in SKY_CAMERAS], False: [styles[c] for c in GROUND_CAMERAS]}
        self.identities = {}

    def save(self, path: str, pid: int, sky: bool, camera: int) -> str:
        if pid not in self.identities:
            self.identities[pid] = _sample_identity(self.rng, pid)
        style = self.styles[sky][camera % len(self.styles[sky])]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _render(self.rng, self.identities[pid], style).save(path, format='JPEG', quality=JPEG_QUALITY)
        return path


def _write_list(path: str, lines: list[str]) -> None:
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write(''.join(f'{line}\n' for line in lines))


def _agreid_name(pid: int, camera: int, frame: int) -> str:
    return f'P{pid:04d}T{1000 + pid:04d}A{pid % 2}C{camera}F{frame:04d}.jpg'


def write_agreid(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """AG-ReID v1: flat folders bounding_box_train, query_all_c0/c3, bounding_box_test_all_c0/c3."""
    paint = _Painter(seed)
    for pid in range(1, train_ids + 1):
        for frame, camera in enumerate((0, 0, 3, 3)):
            paint.save(os.path.join(out, 'bounding_box_train', _agreid_name(pid, camera, frame)), pid, camera == 0, camera)
    for pid in range(train_ids + 1, train_ids + test_ids + 1):
        for camera in (0, 3):
            paint.save(os.path.join(out, f'query_all_c{camera}', _agreid_name(pid, camera, 0)), pid, camera == 0, camera)
            for frame in (1, 2):
                paint.save(os.path.join(out, f'bounding_box_test_all_c{camera}', _agreid_name(pid, camera, frame)),
                           pid, camera == 0, camera)


def write_agreid_v2(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """AG-ReID.v2: OUT/AG-ReID.v2/{train_all,query,gallery}/<identity>/ and the four lists in OUT.
    The wearable lists leave out the last test identity, as the real lists select subsets."""
    paint, inner = _Painter(seed), os.path.join(out, 'AG-ReID.v2')
    cameras = (0, 2, 3)  # UAV, wearable, CCTV

    def save(split: str, pid: int, camera: int, frame: int) -> str:
        name = _agreid_name(pid, camera, frame)
        relative = f'{split}/{name[:name.index("C")]}/{name}'
        paint.save(os.path.join(inner, relative), pid, camera == 0, camera)
        return relative

    for pid in range(1, train_ids + 1):
        for frame, camera in enumerate(cameras * 2):
            save('train_all', pid, camera, frame)
    query, gallery = {c: [] for c in cameras}, {c: [] for c in cameras}
    test_pids = list(range(train_ids + 1, train_ids + test_ids + 1))
    for pid in test_pids:
        for camera in cameras:
            query[camera].append((pid, save('query', pid, camera, 0)))
            gallery[camera] += [(pid, save('gallery', pid, camera, frame)) for frame in (1, 2)]

    def lines(entries, pids):
        return [relative for pid, relative in entries if pid in pids]

    everyone, subset = set(test_pids), set(test_pids[:-1])
    for file, query_camera, gallery_camera, pids in (
            ('exp1_aerial_to_cctv.txt', 0, 3, everyone), ('exp2_aerial_to_wearable.txt', 0, 2, subset),
            ('exp4_cctv_to_aerial.txt', 3, 0, everyone), ('exp5_wearable_to_aerial.txt', 2, 0, subset)):
        _write_list(os.path.join(out, file), lines(query[query_camera], pids) + lines(gallery[gallery_camera], pids))


def write_cargo(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """CARGO: OUT/{train,query,gallery}/Cam{1..13}/Cam{n}_{day|night}_{pid}_{index}.jpg; per identity two
    aerial (1-5) and two ground (6-13) cameras; per test identity one aerial and one ground query."""
    paint = _Painter(seed)
    for pid in range(1, train_ids + test_ids + 1):
        test = pid > train_ids
        aerial, ground = 1 + pid % 5, 6 + pid % 8
        shots = [(aerial, 0), (aerial, 1), (1 + (pid + 2) % 5, 2), (ground, 3), (ground, 4), (6 + (pid + 3) % 8, 5)]
        for camera, index in shots:
            split = ('query' if index in (0, 3) else 'gallery') if test else 'train'
            name = f"Cam{camera}_{('day', 'night')[pid % 2]}_{pid:04d}_{index}.jpg"
            paint.save(os.path.join(out, split, f'Cam{camera}', name), pid, camera <= 5, camera)


def _g2aps_name(pid: int, camera: int, frame: int) -> str:
    return f'{pid:04d}_c{camera}v{1 + frame % 3}_{frame:06d}.jpg'


def write_g2aps_reid(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """G2APS-ReID: bounding_box_train, query_c0/c3, bounding_box_test_c0/c3 (subfolders named by the
    unpadded id), flat bounding_box_gallery distractors (id 5555), exp3_A2G+.txt and exp4_G2A+.txt."""
    paint = _Painter(seed)

    def save(relative: str, pid: int, camera: int) -> str:
        paint.save(os.path.join(out, relative), pid, camera == 0, camera)
        return relative

    for pid in range(1, train_ids + 1):
        for frame, camera in enumerate((0, 0, 3, 3)):
            save(f'bounding_box_train/{pid}/{_g2aps_name(pid, camera, frame)}', pid, camera)
    query, test, distractors = {0: [], 3: []}, {0: [], 3: []}, {0: [], 3: []}
    for pid in range(train_ids + 1, train_ids + test_ids + 1):
        for camera in (0, 3):
            query[camera].append(save(f'query_c{camera}/{pid}/{_g2aps_name(pid, camera, 0)}', pid, camera))
            test[camera] += [save(f'bounding_box_test_c{camera}/{pid}/{_g2aps_name(pid, camera, frame)}', pid, camera)
                             for frame in (1, 2)]
    for frame in range(4):  # distractors: other people, all labelled 5555
        camera = (0, 3)[frame % 2]
        paint.save(os.path.join(out, 'bounding_box_gallery', _g2aps_name(5555, camera, 100 + frame)),
                   10_000 + frame, camera == 0, camera)
        distractors[camera].append(f'bounding_box_gallery/{_g2aps_name(5555, camera, 100 + frame)}')
    _write_list(os.path.join(out, 'exp3_A2G+.txt'), query[0] + test[3] + distractors[3])
    _write_list(os.path.join(out, 'exp4_G2A+.txt'), query[3] + test[0] + distractors[0])


def write_lagper(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """LAGPeR: bounding_box_train/<pid>/ and exp3_A2G+.txt, exp4_G2A+.txt, exp5_G2A+G.txt naming images in
    query_aerial/, query_ground/ and bounding_box_test/ (the real folder names are not public). Cameras 3
    and 13 are aerial, 1 and 11 ground; a test identity has a second ground image from its query camera."""
    paint = _Painter(seed)
    shots = [(1, 0), (1, 1), (11, 2), (3, 3), (13, 4)]
    for pid in range(1, train_ids + 1):
        for camera, frame in shots:
            paint.save(os.path.join(out, 'bounding_box_train', f'{pid:04d}', f'{pid:04d}_c{camera}_{frame:04d}.jpg'),
                       pid, camera in (3, 13), camera)
    queries, aerial_gallery, ground_gallery = {'aerial': [], 'ground': []}, [], []
    for pid in range(train_ids + 1, train_ids + test_ids + 1):
        for camera, frame in shots:
            sky = camera in (3, 13)
            folder = ('query_aerial' if sky else 'query_ground') if frame in (0, 3) else 'bounding_box_test'
            relative = f'{folder}/{pid:04d}/{pid:04d}_c{camera}_{frame:04d}.jpg'
            paint.save(os.path.join(out, relative), pid, sky, camera)
            if folder.startswith('query'):
                queries['aerial' if sky else 'ground'].append(relative)
            else:
                (aerial_gallery if sky else ground_gallery).append(relative)
    _write_list(os.path.join(out, 'exp3_A2G+.txt'), queries['aerial'] + ground_gallery)
    _write_list(os.path.join(out, 'exp4_G2A+.txt'), queries['ground'] + aerial_gallery)
    _write_list(os.path.join(out, 'exp5_G2A+G.txt'), queries['ground'] + aerial_gallery + ground_gallery)


def write_csv(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """A user's dataset: images/<pid>/..., one dataset.csv with a split column and a protocols.yml
    declaring S2G and G2S (view queries against the other view's gallery)."""
    paint, rows = _Painter(seed), ['path,pid,camera,view,split']
    for pid in range(1, train_ids + test_ids + 1):
        test = pid > train_ids
        for index, (camera, view) in enumerate(((0, 'ground'), (0, 'ground'), (1, 'ground'), (2, 'sky'), (2, 'sky'),
                                                (3, 'sky'))):
            split = ('query' if index in (0, 3) else 'gallery') if test else 'train'
            relative = f'images/person_{pid}/{index}.jpg'
            paint.save(os.path.join(out, relative), pid, view == 'sky', camera)
            rows.append(f'{relative},person_{pid},{camera},{view},{split}')
    _write_list(os.path.join(out, 'dataset.csv'), rows)
    _write_list(os.path.join(out, 'protocols.yml'), [
        'identities_disjoint: true', 'protocols:',
        '  S2G: {query: {view: sky}, gallery: {view: ground}, removal: same_camera}',
        '  G2S: {query: {view: ground}, gallery: {view: sky}, removal: same_camera}'])


WRITERS = {'agreid': write_agreid, 'agreid_v2': write_agreid_v2, 'cargo': write_cargo,
           'g2aps_reid': write_g2aps_reid, 'lagper': write_lagper, 'csv': write_csv}


def generate(name: str, out_dir: str, train_ids: int = 8, test_ids: int = 4, seed: int = 0) -> str:
    """Write the `name` fixture into the empty or new folder `out_dir`; returns `out_dir`."""
    if name not in WRITERS:
        raise UserError(f"fixture '{name}' is unknown; choose one of {', '.join(WRITERS)}")
    if train_ids < 2 or test_ids < 2:
        raise UserError(f"--train-ids and --test-ids must be at least 2, got {train_ids} and {test_ids}")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise UserError(f"'{out_dir}' is not empty; choose a new or empty folder")
    os.makedirs(out_dir, exist_ok=True)
    WRITERS[name](out_dir, train_ids, test_ids, seed)
    return out_dir


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description='Write a tiny aerial-ground dataset in its published layout.')
    parser.add_argument('name', help=f"one of {', '.join(WRITERS)}")
    parser.add_argument('out_dir', help='a new or empty folder; use it as DATASETS.ROOT_DIR')
    parser.add_argument('--train-ids', type=int, default=8)
    parser.add_argument('--test-ids', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    generate(args.name, args.out_dir, args.train_ids, args.test_ids, args.seed)
    print(f"{args.name} fixture in {args.out_dir} ({args.train_ids} train and {args.test_ids} test identities)")


if __name__ == '__main__':
    main()
