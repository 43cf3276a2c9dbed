"""Tiny stand-ins for the datasets in their published layouts, for tests and trials.

    python -m datasets.fixtures NAME OUT_DIR [--train-ids 8] [--test-ids 4] [--seed 0]

NAME: agreid, agreid_v2, cargo, g2aps_reid, lagper, csv, or one of CLIP-ReID's market1501, msmt17,
dukemtmcreid, occ_duke, veri, vehicleid (in the folders CLIP-ReID's readers take, e.g.
OUT_DIR/dukemtmcreid/DukeMTMC-reID/). The folders, file names and lists follow each download (README.md,
"Datasets"); the images are the synthetic people of datasets/synthetic_mssl.py, drawn by a ground or a
sky camera style (the vehicle sets reuse them). Nothing is downloaded, and the output is a deterministic
function of the arguments. DATASETS.ROOT_DIR is OUT_DIR for every NAME.
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


def _single_view_test_shots(test_ids: int, cameras: int) -> list[tuple[int, str, int]]:
    """(test identity number, split, camera) of the CLIP-ReID person fixtures' test images: a query and
    two gallery images in other cameras per identity, plus one gallery image in the query's own camera
    (removed when evaluating); the last identity's gallery is in the query's camera only, so its
    query has no positive (it is not a valid query)."""
    shots = []
    for number in range(test_ids):
        query_camera = 1 + number % cameras
        others = [1 + (number + k) % cameras for k in (1, 2)]
        gallery = [query_camera] if number == test_ids - 1 else [*others, query_camera]
        shots += [(number, 'query', query_camera)] + [(number, 'gallery', camera) for camera in gallery]
    return shots


def _write_market_style(out: str, folder: str, train_ids: int, test_ids: int, seed: int, cameras: int,
                        name) -> _Painter:
    """bounding_box_train / query / bounding_box_test of `folder`; `name(pid, camera, frame)` names a file.
    The gallery also holds a distractor (an identity seen only there)."""
    paint = _Painter(seed)
    for pid in range(1, train_ids + 1):
        for frame in range(4):
            camera = 1 + (pid + frame) % cameras
            paint.save(os.path.join(out, folder, 'bounding_box_train', name(pid, camera, frame)), pid, False, camera)
    split_folder = {'query': 'query', 'gallery': 'bounding_box_test'}
    for frame, (number, split, camera) in enumerate(_single_view_test_shots(test_ids, cameras)):
        pid = 100 + number
        paint.save(os.path.join(out, folder, split_folder[split], name(pid, camera, 100 + frame)), pid, False, camera)
    paint.save(os.path.join(out, folder, 'bounding_box_test', name(999, 1, 999)), 999, False, 1)
    return paint


def write_market1501(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """Market-1501 in OUT/Market-1501-v15.09.15 (CLIP-ReID's folder); a junk image (-1) in the gallery."""
    def name(pid, camera, frame):
        return f"{'-1' if pid < 0 else f'{pid:04d}'}_c{camera}s1_{frame:06d}_00.jpg"
    paint = _write_market_style(out, 'Market-1501-v15.09.15', train_ids, test_ids, seed, 6, name)
    paint.save(os.path.join(out, 'Market-1501-v15.09.15', 'bounding_box_test', name(-1, 2, 998)), 998, False, 2)


def _duke_name(pid: int, camera: int, frame: int) -> str:
    return f'{pid:04d}_c{camera}_f{frame:07d}.jpg'


def write_dukemtmcreid(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """DukeMTMC-reID in OUT/dukemtmcreid/DukeMTMC-reID (CLIP-ReID's folders), cameras c1-c8."""
    _write_market_style(out, os.path.join('dukemtmcreid', 'DukeMTMC-reID'), train_ids, test_ids, seed, 8, _duke_name)


def write_occ_duke(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """Occluded-Duke in OUT/dukemtmcreid/Occluded_Duke (CLIP-ReID's folders), cameras c1-c8."""
    _write_market_style(out, os.path.join('dukemtmcreid', 'Occluded_Duke'), train_ids, test_ids, seed, 8, _duke_name)


def write_msmt17(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """MSMT17 (V1 layout) in OUT/MSMT17: train/<id>/ and test/<id>/, list_train.txt, list_val.txt (one
    more image of each training identity), list_query.txt, list_gallery.txt. Identities are numbered
    from 0 in train and again in test, as in the release."""
    paint, folder = _Painter(seed), os.path.join(out, 'MSMT17')
    lists = {'list_train.txt': [], 'list_val.txt': [], 'list_query.txt': [], 'list_gallery.txt': []}

    def save(split: str, list_file: str, pid: int, camera: int, frame: int, person: int) -> None:
        relative = f'{pid:04d}/{pid:04d}_{frame:03d}_{camera:02d}_0303morning_{frame:04d}_0.jpg'
        paint.save(os.path.join(folder, split, relative), person, False, camera)
        lists[list_file].append(f'{relative} {pid}')

    for pid in range(train_ids):
        for frame in range(4):
            save('train', 'list_train.txt', pid, 1 + (pid + frame) % 15, frame, pid)
        save('train', 'list_val.txt', pid, 1 + (pid + 7) % 15, 4, pid)
    for frame, (pid, split, camera) in enumerate(_single_view_test_shots(test_ids, 15)):
        save('test', f'list_{split}.txt', pid, camera, 10 + frame, 1000 + pid)
    for list_file, lines in lists.items():
        _write_list(os.path.join(folder, list_file), lines)


def write_veri(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """VeRi-776 in OUT/VeRi: image_train, image_query, image_test (each query image is in image_test
    too, as in the release), 20 cameras, and the viewpoint files keypoint_train.txt / keypoint_test.txt
    (viewpoints 0-7) that leave out one training and one test image; a junk image (-1) in image_test."""
    paint, folder = _Painter(seed), os.path.join(out, 'VeRi')
    keypoints = {'keypoint_train.txt': [], 'keypoint_test.txt': []}
    count = 0

    def save(split: str, vehicle: int, camera: int, annotated: bool = True) -> None:
        nonlocal count
        name = f"{'-1' if vehicle < 0 else f'{vehicle:04d}'}_c{camera:03d}_{1000 * count:08d}_0.jpg"
        paint.save(os.path.join(folder, split, name), abs(vehicle), False, camera)
        if annotated and split != 'image_query':
            file = 'keypoint_train.txt' if split == 'image_train' else 'keypoint_test.txt'
            keypoints[file].append(f"VeRi/{split}/{name} {' '.join(['-1'] * 40)} {count % 8}")
        count += 1

    for vehicle in range(1, train_ids + 1):
        for shot in range(4):
            save('image_train', vehicle, 1 + (vehicle + 3 * shot) % 20, annotated=(vehicle, shot) != (1, 3))
    for number, split, camera in _single_view_test_shots(test_ids, 20):
        vehicle = 500 + number
        if split == 'query':
            save('image_query', vehicle, camera)
            count -= 1  # the same image again in image_test
        save('image_test', vehicle, camera, annotated=(number, split, camera) != (0, 'gallery', 2))
    save('image_test', -1, 5)
    for file, lines in keypoints.items():
        _write_list(os.path.join(folder, file), lines)


def write_vehicleid(out: str, train_ids: int, test_ids: int, seed: int) -> None:
    """VehicleID in OUT/VehicleID_V1.0: image/<7-digit name>.jpg and train_test_split/ with train_list.txt
    and test_list_800.txt (test-ids vehicles), test_list_1600.txt (twice as many), test_list_2400.txt
    (three times). A test vehicle has 2 to 4 images, except every fourth, which has one (gallery only)."""
    paint, folder = _Painter(seed), os.path.join(out, 'VehicleID_V1.0')
    count = 0

    def save(vehicle: int, images: int) -> list[str]:
        nonlocal count
        lines = []
        for _ in range(images):
            count += 1
            paint.save(os.path.join(folder, 'image', f'{count:07d}.jpg'), vehicle, False, count % 6)
            lines.append(f'{count:07d} {vehicle}')
        return lines

    train = [line for vehicle in range(1, train_ids + 1) for line in save(2 * vehicle, 4)]
    test = [save(2 * number + 1, 1 if number % 4 == 3 else 2 + number % 3) for number in range(3 * test_ids)]
    split = os.path.join(folder, 'train_test_split')
    os.makedirs(split, exist_ok=True)
    _write_list(os.path.join(split, 'train_list.txt'), train)
    for size, vehicles in ((800, test_ids), (1600, 2 * test_ids), (2400, 3 * test_ids)):
        _write_list(os.path.join(split, f'test_list_{size}.txt'), [line for lines in test[:vehicles] for line in lines])


WRITERS = {'agreid': write_agreid, 'agreid_v2': write_agreid_v2, 'cargo': write_cargo,
           'g2aps_reid': write_g2aps_reid, 'lagper': write_lagper, 'csv': write_csv,
           'market1501': write_market1501, 'msmt17': write_msmt17, 'dukemtmcreid': write_dukemtmcreid,
           'occ_duke': write_occ_duke, 'veri': write_veri, 'vehicleid': write_vehicleid}


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
    parser = argparse.ArgumentParser(description='Write a tiny dataset in its published layout.')
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
