"""AG-ReID.v2, CARGO, G2APS-ReID, LAGPeR and CSV datasets: name rules, published layouts, protocols,
cross-dataset configuration and the SIE table's handling of cameras it never saw."""
import os
import re

import numpy as np
import pytest
import torch

from config import load_config
from datasets import FACTORY, camera_name, init_dataset
from datasets.agreid_v2 import parse_agreid_v2_name
from datasets.bases import GROUND, SKY, list_image_files
from datasets.cargo import parse_cargo_name
from datasets.fixtures import generate
from datasets.g2aps_reid import parse_g2aps_name
from datasets.lagper import parse_lagper_name
from datasets.protocols import is_query_line
from model import load_clip
from model.image_encoder import ReIDImageEncoder
from utils.errors import UserError
from evaluation.rank import evaluate
from utils.vocabulary import SAME_CAMERA, SAME_VIEW

EXPECTED_PROTOCOLS = {
    'agreid_v2': ['A2C', 'A2W', 'C2A', 'W2A'],
    'cargo': ['MIXED', 'AG', 'A2G', 'G2A', 'A2A', 'G2G'],
    'g2aps_reid': ['A2G', 'G2A'],
    'lagper': ['A2G', 'G2A', 'G2AG'],
    'csv': ['S2G', 'G2S'],
}


@pytest.fixture(scope='module')
def fixture_root(tmp_path_factory):
    roots = {}

    def root(name: str) -> str:
        if name not in roots:
            roots[name] = generate(name, str(tmp_path_factory.mktemp(name)), train_ids=4, test_ids=3, seed=1)
        return roots[name]
    return root


def names(items):
    return sorted(os.path.basename(item[0]) for item in items)


# ---- file-name rules ----

@pytest.mark.parametrize('dataset, file_name', [
    ('mssl', '0065_0909am_3_G003_c05_p0065_00.jpg'), ('mssl', '0065_0325pm_1_G003_c14_p0065_00.jpg'),
    ('market1501', '0002_c6s1_000451_03.jpg'), ('agreid', 'P0006T0214A0C3F1831.jpg'),
    ('agreid_v2', 'P0006T0214A0C2F1831.jpg'), ('cargo', 'Cam12_day_2519_320.jpg'),
    ('g2aps_reid', '0012_c0v3_000123.jpg'), ('g2aps_reid', '0012_c3v1_000123.jpg'),
    ('lagper', '0012_c9_0001.jpg'), ('lagper', '0012_c11_0001.jpg'), ('lagper', '0012_c22_0001.jpg')])
def test_camera_names_are_spelled_as_the_file_names(dataset, file_name):
    _, camid, _ = FACTORY[dataset].parse_name(file_name)
    name = camera_name(dataset, camid)
    assert re.search(rf'{re.escape(name)}(?!\d)', file_name), (name, file_name)
    assert camera_name('csv', 3) == 'cam3'


def test_name_rules():
    assert parse_agreid_v2_name('P0006T0214A0C0F1831.jpg') == ((6, 214, 0), 0, SKY)
    assert parse_agreid_v2_name('P0006T0214A0C2F1831.jpg') == ((6, 214, 0), 2, GROUND)
    assert parse_agreid_v2_name('P0006T0214A0C3F1831.jpg')[2] == GROUND
    assert parse_cargo_name('Cam2_day_2519_320.jpg') == (2519, 1, SKY)
    assert parse_cargo_name('Cam13_night_0007_1.jpg') == (7, 12, GROUND)
    assert parse_cargo_name('Cam6_day_0007_1.jpg')[2] == GROUND and parse_cargo_name('Cam5_day_7_1.jpg')[2] == SKY
    assert parse_g2aps_name('0012_c0v3_000123.jpg') == (12, 0, SKY)
    assert parse_g2aps_name('5555_c3v1_000001.jpg') == (5555, 1, GROUND)
    assert parse_lagper_name('0012_c1_0001.jpg') == (12, 0, GROUND)
    assert parse_lagper_name('0012_c9_0001.jpg') == (12, 8, SKY)
    assert parse_lagper_name('0012_c11_0001.jpg') == (12, 9, GROUND)  # no camera 10
    assert parse_lagper_name('0012_c22_0001.jpg') == (12, 20, SKY)
    for parse, bad in ((parse_agreid_v2_name, 'P0006T0214A0C1F1831.jpg'), (parse_cargo_name, 'Cam14_day_1_1.jpg'),
                       (parse_cargo_name, 'day_1_1.jpg'), (parse_g2aps_name, '0012_c0_000123.jpg'),
                       (parse_lagper_name, '0012_c10_0001.jpg'), (parse_lagper_name, 'x_c1.jpg')):
        with pytest.raises(UserError, match=re.escape(bad)):
            parse(bad)


def test_query_lines_follow_the_first_folder():
    assert is_query_line('query/P0001/a.jpg') and is_query_line('query_c0/12/a.jpg')
    assert not is_query_line('gallery/P0001/a.jpg') and not is_query_line('bounding_box_test_c3/1/a.jpg')
    assert not is_query_line('queryset/a.jpg')


# ---- the published layouts, read from generated fixtures ----

@pytest.mark.parametrize('name', sorted(EXPECTED_PROTOCOLS))
def test_fixture_declares_its_protocols(fixture_root, name):
    dataset = init_dataset(name, fixture_root(name))
    assert list(dataset.supported_modes) == EXPECTED_PROTOCOLS[name]
    assert dataset.num_train_pids == 4
    for protocol in dataset.supported_modes:
        query, gallery = dataset.eval_split(protocol)
        assert query and gallery
        assert {item[1] for item in query} <= {item[1] for item in gallery}  # every query can be found
    with pytest.raises(UserError, match=', '.join(EXPECTED_PROTOCOLS[name]) + ' or ALL'):
        dataset.eval_split('S2S')


@pytest.mark.parametrize('name, train_folder', [('agreid_v2', 'AG-ReID.v2/train_all'), ('cargo', 'train'),
                                                ('g2aps_reid', 'bounding_box_train'), ('lagper', 'bounding_box_train')])
def test_images_sit_one_level_below_the_split_folders(fixture_root, name, train_folder):
    folder = os.path.join(fixture_root(name), train_folder)
    assert list_image_files(folder) == []  # a flat reader finds nothing
    assert len(init_dataset(name, fixture_root(name)).train) > 0


def test_agreid_v2_lists(fixture_root):
    ds = init_dataset('agreid_v2', fixture_root('agreid_v2'))
    views = {protocol: ({item[3] for item in ds.eval_split(protocol)[0]},
                        {item[2] for item in ds.eval_split(protocol)[1]}) for protocol in ds.supported_modes}
    assert views == {'A2C': ({SKY}, {3}), 'A2W': ({SKY}, {2}), 'C2A': ({GROUND}, {0}), 'W2A': ({GROUND}, {0})}
    assert all(ds.removal_rule(p) == SAME_CAMERA for p in ds.supported_modes)
    a2c_query, a2w_query = ds.eval_split('A2C')[0], ds.eval_split('A2W')[0]
    assert len({item[1] for item in a2w_query}) == len({item[1] for item in a2c_query}) - 1  # a subset
    assert all('/query/' in item[0] for item in a2c_query)
    # One numbering of test identities across the lists: the same image has the same pid everywhere.
    pid_of = {}
    for protocol in ds.supported_modes:
        for path, pid, _, _ in (*ds.eval_split(protocol)[0], *ds.eval_split(protocol)[1]):
            assert pid_of.setdefault(path, pid) == pid


def test_agreid_v2_missing_image_in_a_list_names_the_line(fixture_root, tmp_path):
    import shutil
    root = str(tmp_path / 'v2')
    shutil.copytree(fixture_root('agreid_v2'), root)
    with open(os.path.join(root, 'exp1_aerial_to_cctv.txt'), 'a') as handle:
        handle.write('gallery/P9999/P9999T0001A0C3F0001.jpg\n')
    with pytest.raises(UserError, match=r'exp1_aerial_to_cctv.txt line \d+: image .*P9999T0001A0C3F0001.jpg'):
        init_dataset('agreid_v2', root)


def test_cargo_protocols(fixture_root):
    ds = init_dataset('cargo', fixture_root('cargo'))
    def views(items):
        return {item[3] for item in items}
    assert ds.eval_split('MIXED') == ds.eval_split('AG') == (ds.query, ds.gallery)
    assert ds.removal_rule('MIXED') == SAME_CAMERA and ds.removal_rule('AG') == SAME_VIEW
    for protocol, (q_view, g_view) in {'A2G': (SKY, GROUND), 'G2A': (GROUND, SKY), 'A2A': (SKY, SKY),
                                       'G2G': (GROUND, GROUND)}.items():
        query, gallery = ds.eval_split(protocol)
        assert views(query) == {q_view} and views(gallery) == {g_view}
    assert {item[2] for item in ds.train if item[3] == SKY} <= set(range(5))


def test_g2aps_distractors_are_in_the_gallery_of_the_other_view(fixture_root):
    ds = init_dataset('g2aps_reid', fixture_root('g2aps_reid'))
    for protocol, (q_cam, g_cam) in {'A2G': (0, 1), 'G2A': (1, 0)}.items():
        query, gallery = ds.eval_split(protocol)
        assert {item[2] for item in query} == {q_cam} and {item[2] for item in gallery} == {g_cam}
        assert sum(item[1] == 5555 for item in gallery) == 2


def test_lagper_g2ag_needs_camera_removal(fixture_root):
    """G2AG: a ground query's same-person image from another ground camera is a true match. Removing
    by camera keeps it; removing by view would throw it away."""
    ds = init_dataset('lagper', fixture_root('lagper'))
    assert ds.removal_rule('G2AG') == SAME_CAMERA
    query, gallery = ds.eval_split('G2AG')
    assert {item[3] for item in query} == {GROUND} and {item[3] for item in gallery} == {GROUND, SKY}
    q = np.array([item[1:] for item in query]).T.copy()  # rows: pids, camids, views
    g = np.array([item[1:] for item in gallery]).T.copy()
    # Distances that put each query's other-ground-camera image first and everything else behind.
    distmat = np.ones((len(query), len(gallery)))
    other_ground = (g[0][None] == q[0][:, None]) & (g[2][None] == GROUND) & (g[1][None] != q[1][:, None])
    assert other_ground.any(1).all()
    distmat[other_ground] = 0.0
    args = (None, None, q[0], g[0], q[1], g[1], q[2], g[2], 'G2AG')
    assert evaluate(*args, distmat=distmat, removal=SAME_CAMERA)['rank1'] == 1.0
    assert evaluate(*args, distmat=distmat, removal=SAME_VIEW)['rank1'] < 1.0


# ---- CSV datasets ----

def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        handle.write(text)


def csv_root(tmp_path, rows=None, protocols=None):
    """Per-split CSVs over tiny images; `rows` {split: extra lines}."""
    from PIL import Image
    root = tmp_path / 'mine'
    lines = {'train': [], 'query': [], 'gallery': []}
    for pid, split in ((1, 'train'), (2, 'train'), (3, 'test'), (4, 'test')):
        for index, (camera, view) in enumerate(((0, 'ground'), (1, 'ground'), (2, 'sky'))):
            path = root / 'img' / f'{pid}_{index}.png'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new('RGB', (8, 16), (pid * 40, index * 60, 0)).save(path)
            target = split if split == 'train' else ('query' if index == 0 else 'gallery')
            lines[target].append(f'img/{pid}_{index}.png,{pid},{camera},{view}')
    for split, extra in (rows or {}).items():
        lines[split] += extra
    for split, split_lines in lines.items():
        write(str(root / f'{split}.csv'), 'path,pid,camera,view\n' + '\n'.join(split_lines) + '\n')
    if protocols is not None:
        write(str(root / 'protocols.yml'), protocols)
    return str(root)


def test_csv_per_split_files_and_default_protocol(tmp_path):
    ds = init_dataset('csv', csv_root(tmp_path))
    assert ds.supported_modes == ('DDC',) and ds.removal_rule('DDC') == SAME_CAMERA
    assert ds.num_train_pids == 2 and len(ds.query) == 2 and len(ds.gallery) == 4
    assert {item[3] for item in ds.gallery} == {GROUND, SKY}


def test_csv_protocols_with_view_and_list_selectors(tmp_path):
    root = csv_root(tmp_path, protocols=(
        'protocols:\n  G2S: {query: {view: ground}, gallery: {view: sky}, removal: none}\n'
        '  PICK: {query: {list: picked.txt}}\n'))
    write(os.path.join(root, 'picked.txt'), 'img/3_0.png\n\n')
    ds = init_dataset('csv', root)
    assert ds.supported_modes == ('G2S', 'PICK')
    assert names(ds.eval_split('G2S')[1]) == ['3_2.png', '4_2.png'] and ds.removal_rule('G2S') == 'none'
    assert names(ds.eval_split('PICK')[0]) == ['3_0.png'] and len(ds.eval_split('PICK')[1]) == 4


@pytest.mark.parametrize('rows, message', [
    ({'train': ['img/1_0.png,1,x,ground']}, r"train.csv line 8: camera 'x' is not an integer"),
    ({'train': ['img/1_0.png,1,0,air']}, r"train.csv line 8: view 'air' is not one of ground, sky"),
    ({'gallery': ['img/none.png,3,0,sky']}, r"gallery.csv line 6: image '.*none.png' does not exist"),
    ({'query': ['img/3_0.png,3,0']}, r"query.csv line 4: expected 4 fields"),
    ({'query': ['img/3_0.png,3,0,ground,extra']}, r"query.csv line 4: expected 4 fields"),
    ({'query': ['img/3_0.png,,0,ground']}, r"query.csv line 4: empty pid"),
    ({'gallery': ['img/1_0.png,1,0,ground']}, r"1 identities in both train and query/gallery \(e.g. '1'\)"),
])
def test_csv_bad_rows_give_one_line(tmp_path, rows, message):
    with pytest.raises(UserError, match=message) as caught:
        init_dataset('csv', csv_root(tmp_path, rows))
    assert '\n' not in str(caught.value)


def test_csv_shared_identities_allowed_when_declared(tmp_path):
    root = csv_root(tmp_path, {'gallery': ['img/1_0.png,1,0,ground']}, protocols='identities_disjoint: false\n')
    assert len(init_dataset('csv', root).gallery) == 5


def test_csv_missing_files_and_bad_protocols(tmp_path):
    root = csv_root(tmp_path)
    os.remove(os.path.join(root, 'gallery.csv'))
    with pytest.raises(UserError, match=r"CSV file '.*gallery.csv' does not exist"):
        init_dataset('csv', root)
    for text, message in (('protocols:\n  ALL: {}\n', "protocol name 'ALL'"),
                          ('protocols:\n  X: {removal: by_view}\n', "removal 'by_view'"),
                          ('protocols:\n  X: {query: {list: nope.txt}}\n', "nope.txt' does not exist"),
                          ('colours: 3\n', 'not colours')):
        with pytest.raises(UserError, match=message):
            init_dataset('csv', csv_root(tmp_path / text[:3].strip(':'), protocols=text))


def test_csv_single_file_with_split_column(fixture_root):
    ds = init_dataset('csv', fixture_root('csv'))
    assert ds.num_train_pids == 4 and len({item[1] for item in ds.query}) == 3


# ---- configuration: protocol names and test datasets ----

def test_eval_mode_is_checked_against_the_datasets_protocols():
    assert load_config('', ['DATASETS.NAMES', 'agreid_v2', 'TEST.EVAL_MODE', 'A2C']).TEST.EVAL_MODE == 'A2C'
    assert load_config('', ['DATASETS.NAMES', 'csv', 'TEST.EVAL_MODE', 'MINE']).TEST.EVAL_MODE == 'MINE'
    with pytest.raises(UserError, match=r"TEST.EVAL_MODE = 'A2C': must be one of S2G, G2S, DDC, ALL \(the protocols of dataset 'mssl'\)"):
        load_config('', ['TEST.EVAL_MODE', 'A2C'])
    with pytest.raises(UserError, match="must be one of MIXED, AG, A2G, G2A, A2A, G2G, ALL \\(the protocols of dataset 'cargo'\\)"):
        load_config('', ['TEST.EVAL_MODE', 'S2G', 'DATASETS.TEST_NAMES', 'agreid,cargo',
                         'DATASETS.TEST_ROOT_DIR', 'a,b'])
    with pytest.raises(UserError, match='TEST.EVAL_MODE'):
        load_config('', ['TEST.EVAL_MODE', 'S 2G'])


def test_test_dataset_keys():
    cfg = load_config('', ['DATASETS.TEST_NAMES', 'agreid, lagper', 'DATASETS.TEST_ROOT_DIR', 'a, b'])
    assert cfg.DATASETS.TEST_NAMES == 'agreid, lagper'
    with pytest.raises(UserError, match="DATASETS.TEST_NAMES.*'cuhk03' is not a dataset"):
        load_config('', ['DATASETS.TEST_NAMES', 'cuhk03', 'DATASETS.TEST_ROOT_DIR', 'a'])
    with pytest.raises(UserError, match=r'DATASETS.TEST_ROOT_DIR.*needs one folder per DATASETS.TEST_NAMES entry \(2\)'):
        load_config('', ['DATASETS.TEST_NAMES', 'agreid,cargo', 'DATASETS.TEST_ROOT_DIR', 'a'])
    with pytest.raises(UserError, match='DATASETS.TEST_ROOT_DIR'):
        load_config('', ['DATASETS.TEST_ROOT_DIR', 'a'])


# ---- SIE and cameras the model never saw ----

@pytest.mark.parametrize('camera, view', [(True, True), (True, False), (False, True)])
def test_unseen_cameras_get_no_camera_side_information(camera, view):
    torch.manual_seed(0)
    clip = load_clip('ViT-Tiny-16')
    encoder = ReIDImageEncoder(clip.visual, image_size=(64, 32), camera_num=3, view_num=2, sie_coe=3.0,
                               sie_camera=camera, sie_view=view)
    images = torch.randn(4, 3, 64, 32)
    cams, views = torch.tensor([2, -1, 7, 0]), torch.tensor([1, 0, 1, 0])
    with torch.no_grad():
        plain = encoder.embed(images, use_sie=False)
        side = encoder.embed(images, cams, views)
        known_alone = encoder.embed(images[[0, 3]], cams[[0, 3]], views[[0, 3]])
    torch.testing.assert_close(side[[0, 3]], known_alone)  # seen cameras: as before
    if camera:
        assert torch.equal(side[[1, 2]], plain[[1, 2]])  # unseen cameras: no SIE term, no index error
    else:
        torch.testing.assert_close(side[1, 0] - plain[1, 0], 3.0 * encoder.sie_embed[0])  # view only


def test_junk_list_lines_lagper_skips_g2aps_keeps(fixture_root, tmp_path):
    """LAGPeR's loader drops id -1 list lines; G2APS-ReID's keeps every line of its lists."""
    import shutil
    for name, list_file, junk_name, kept in (('lagper', 'exp3_A2G+.txt', '-1_c1_0009.jpg', False),
                                             ('g2aps_reid', 'exp3_A2G+.txt', '-001_c3v1_000009.jpg', True)):
        root = str(tmp_path / name)
        shutil.copytree(fixture_root(name), root)
        write(os.path.join(root, 'bounding_box_test', 'junk', junk_name), 'not read here')
        with open(os.path.join(root, list_file), 'a') as handle:
            handle.write(f'bounding_box_test/junk/{junk_name}\n')
        gallery = init_dataset(name, root).eval_split('A2G')[1]
        assert (junk_name in names(gallery)) == kept


def test_mssl_keeps_its_rules(tiny_mssl):
    from utils.vocabulary import MSSL_REMOVAL
    ds = init_dataset('mssl', tiny_mssl)
    assert {mode: ds.removal_rule(mode) for mode in ds.supported_modes} == MSSL_REMOVAL


def test_ranked_lists_remove_by_the_protocols_rule():
    from evaluation.ranked_lists import removal_mask
    query = {'pids': np.array([1]), 'camids': np.array([0]), 'views': np.array([GROUND])}
    gallery = {'pids': np.array([1, 1, 1, 2]), 'camids': np.array([0, 1, 2, 0]),
               'views': np.array([GROUND, GROUND, SKY, GROUND])}
    assert removal_mask(SAME_CAMERA, [0], query, gallery).tolist() == [[True, False, False, False]]
    assert removal_mask('same_view', [0], query, gallery).tolist() == [[True, True, False, False]]
    assert removal_mask('none', [0], query, gallery).tolist() == [[False] * 4]
