import hashlib
import os

import pytest
import torch
from PIL import Image

from datasets import FACTORY, init_dataset
from datasets.agreid import AGReID, parse_agreid_name
from datasets.bases import ImageDataset
from datasets.market1501 import Market1501, parse_market_name
from datasets.mssl import GROUND_CAMERAS, MSSL, SKY_CAMERAS, parse_mssl_hour, parse_mssl_name
from datasets.synthetic_mssl import generate, main as synthetic_main
from utils.errors import UserError
from processor.settings import loader_settings


def make_tree(root, layout: dict[str, list[str]]):
    """Write a tiny image for every name of every folder; non-image names get text files."""
    for folder, names in layout.items():
        os.makedirs(root / folder, exist_ok=True)
        for name in names:
            path = root / folder / name
            if name.lower().endswith(('.jpg', '.jpeg', '.png')):
                Image.new('RGB', (4, 8), (10, 20, 30)).save(path)
            else:
                path.write_text('not an image')
    return str(root)


def mssl_name(pid, cam, idx=0):
    prefix = '-1' if pid == -1 else f'{pid:04d}'
    return f'{prefix}_0909am_1_G001_c{cam:02d}_p{max(pid, 0):04d}_{idx:02d}.jpg'


def basic_mssl(root, extra=None):
    layout = {
        'bounding_box_train': [mssl_name(12, 1), mssl_name(12, 4), mssl_name(3, 2), mssl_name(3, 5),
                               mssl_name(7, 9), mssl_name(-1, 1)],
        'query': [mssl_name(100, 1), mssl_name(100, 4), mssl_name(101, 14)],
        'bounding_box_test': [mssl_name(100, 2), mssl_name(100, 5), mssl_name(101, 3), mssl_name(101, 15)],
    }
    layout.update(extra or {})
    return make_tree(root, layout)


# ---- name parsing ----

@pytest.mark.parametrize('name, hour', [
    ('0065_0909am_3_G003_c05_p0065_00.jpg', 9), ('0065_0325pm_3_G003_c05_p0065_00.jpg', 15),
    ('0065_1210pm_1_G003_c05_p0065_00.jpg', 12), ('0065_1245am_1_G003_c05_p0065_00.jpg', 0),
    ('0065_0960am_1_G003_c05_p0065_00.jpg', -1), ('0065_noon_1_G003_c05_p0065_00.jpg', -1)])
def test_mssl_hour_of_capture(name, hour):
    assert parse_mssl_hour(name) == hour
    assert MSSL.capture_hour(name) == hour


def test_parse_mssl_name_example():
    assert parse_mssl_name('0065_0909am_3_G003_c05_p0065_p0115_p0167_00.jpg') == (65, 4, 1)
    assert parse_mssl_name('/some/dir/0002_1015pm_1_G010_c01_p0002_03.png') == (2, 0, 0)
    assert parse_mssl_name('-1_0909am_1_G001_c03_p0000_00.jpg')[0] == -1


@pytest.mark.parametrize('name', [
    '0065_0909am_3_G003.jpg',                  # fewer than 5 fields
    'x065_0909am_3_G003_c05_p0065_00.jpg',     # pid not numeric
    '-2_0909am_3_G003_c05_p0065_00.jpg',       # negative pid other than the junk -1
    '0065_0909am_3_G003_05_p0065_00.jpg',      # camera field without 'c'
    '0065_0909am_3_G003_cam5_p0065_00.jpg',    # camera field malformed
    '0065_0909am_3_G003_c16_p0065_00.jpg',     # unknown camera
    '0065_0909am_3_G003_c00_p0065_00.jpg',     # unknown camera
])
def test_parse_mssl_name_rejects_bad_names(name):
    with pytest.raises(UserError, match=name.replace('.', r'\.')):
        parse_mssl_name(name)


def test_mssl_camera_view_table():
    expected_sky = {4, 5, 9, 10, 14, 15}
    assert set(GROUND_CAMERAS) | set(SKY_CAMERAS) == set(range(1, 16))
    assert set(SKY_CAMERAS) == expected_sky
    for cam in range(1, 16):
        pid, camid, view = parse_mssl_name(mssl_name(1, cam))
        assert camid == cam - 1
        assert view == (1 if cam in expected_sky else 0), cam


def test_agreid_name_identity_and_camera():
    identity, camid, view = parse_agreid_name('P0006T0214A0C0F1831.jpg')
    assert (identity, camid, view) == ((6, 214, 0), 0, 1)
    identity3, camid3, view3 = parse_agreid_name('P0006T0214A0C3F0001.jpg')
    assert identity3 == identity and (camid3, view3) == (3, 0)
    assert parse_agreid_name('P0006T0214A1C3F0001.jpg')[0] != identity
    with pytest.raises(UserError, match='P0006T0214A0C2F0001.jpg'):
        parse_agreid_name('P0006T0214A0C2F0001.jpg')
    with pytest.raises(UserError, match='0006_c1.jpg'):
        parse_agreid_name('0006_c1.jpg')


def test_market_name():
    assert parse_market_name('0002_c1s1_000451_03.jpg') == (2, 0, 0)
    assert parse_market_name('1500_c6s3_086567_01.jpg') == (1500, 5, 0)
    assert parse_market_name('-1_c3s2_000001_00.jpg')[0] == -1
    for bad in ('0002_s1_000451_03.jpg', 'abcd_c1s1_000451_03.jpg', '0002_c0s1_000451_03.jpg'):
        with pytest.raises(UserError, match=bad.replace('.', r'\.')):
            parse_market_name(bad)


# ---- MSSL dataset ----

def test_mssl_relabel_junk_and_derived_subsets(tmp_path):
    root = basic_mssl(tmp_path, {'query': [mssl_name(100, 1), mssl_name(100, 4), mssl_name(101, 14),
                                           'notes.txt', mssl_name(101, 2).replace('.jpg', '.JPG')]})
    ds = MSSL(root)
    # junk -1 skipped; pids 3, 7, 12 -> 0, 1, 2
    assert len(ds.train) == 5
    labels = {os.path.basename(p)[:4]: pid for p, pid, _, _ in ds.train}
    assert labels == {'0003': 0, '0007': 1, '0012': 2}
    assert ds.num_train_pids == 3
    assert ds.num_train_cams == 15  # c15 in the gallery
    assert ds.num_train_views == 2
    assert {(pid, view) for _, pid, _, view in ds.train_by_view[1]} == {(2, 1), (0, 1), (1, 1)}
    assert {(pid, view) for _, pid, _, view in ds.train_by_view[0]} == {(2, 0), (0, 0)}
    # query keeps original pids; .txt ignored, .JPG counted
    assert sorted(pid for _, pid, _, _ in ds.query) == [100, 100, 101, 101]
    s2g_q, s2g_g = ds.eval_split('S2G')
    g2s_q, _ = ds.eval_split('G2S')
    ddc_q, ddc_g = ds.eval_split('DDC')
    assert {(pid, cam) for _, pid, cam, _ in s2g_q} == {(100, 3), (101, 13)}
    assert {(pid, cam) for _, pid, cam, _ in g2s_q} == {(100, 0), (101, 1)}
    assert len(ddc_q) == 4
    assert s2g_g == ddc_g == ds.gallery and len(ds.gallery) == 4


def test_mssl_view_folders_override(tmp_path):
    root = basic_mssl(tmp_path, {
        'query_air': [mssl_name(100, 5)],
        'query_ground': [mssl_name(101, 2), mssl_name(100, 3)],
        'bounding_box_train_air': [mssl_name(7, 9)],
        'bounding_box_train_ground': [mssl_name(12, 1), mssl_name(3, 2)],
    })
    ds = MSSL(root)
    s2g_q, _ = ds.eval_split('S2G')
    g2s_q, _ = ds.eval_split('G2S')
    assert [os.path.basename(p) for p, *_ in s2g_q] == [mssl_name(100, 5)]
    assert all('query_air' in p and view == 1 for p, _, _, view in s2g_q)
    assert sorted(pid for _, pid, _, _ in g2s_q) == [100, 101]
    assert len(ds.eval_split('DDC')[0]) == 3  # DDC still uses all of `query`
    # same relabelling as bounding_box_train: 3 -> 0, 7 -> 1, 12 -> 2
    assert [(pid, view) for _, pid, _, view in ds.train_by_view[1]] == [(1, 1)]
    assert sorted((pid, view) for _, pid, _, view in ds.train_by_view[0]) == [(0, 0), (2, 0)]
    assert all('bounding_box_train_ground' in p for p, *_ in ds.train_by_view[0])


def test_mssl_view_folder_with_unknown_train_identity(tmp_path):
    root = basic_mssl(tmp_path, {'bounding_box_train_air': [mssl_name(55, 9)]})
    with pytest.raises(UserError, match='bounding_box_train_air'):
        MSSL(root)


def test_statistics_table(tmp_path):
    table = MSSL(basic_mssl(tmp_path)).statistics_table()
    lines = table.splitlines()
    row = {line.split('|')[0].strip(): [int(v) for v in line.split('|')[1:]] for line in lines if '|' in line
           and 'subset' not in line}
    assert row['train'] == [3, 5, 5]
    assert row['query'] == [2, 3, 3]
    assert row['gallery'] == [2, 4, 4]
    assert 'ground' in table and 'sky' in table


def test_missing_root_and_splits(tmp_path):
    with pytest.raises(UserError, match=r"DATASETS.ROOT_DIR '.*nowhere' does not exist"):
        MSSL(str(tmp_path / 'nowhere'))
    root = make_tree(tmp_path / 'a', {'bounding_box_train': [mssl_name(1, 1)], 'query': [mssl_name(2, 1)]})
    with pytest.raises(UserError, match='bounding_box_test'):
        MSSL(root)
    root = make_tree(tmp_path / 'b', {'bounding_box_train': [mssl_name(1, 1)], 'query': ['readme.txt'],
                                      'bounding_box_test': [mssl_name(2, 2)]})
    with pytest.raises(UserError, match="query' contains no usable images"):
        MSSL(root)


def test_bad_file_name_in_folder_is_named(tmp_path):
    root = basic_mssl(tmp_path, {'bounding_box_test': [mssl_name(100, 2), '0100_0909am_1_G001_c16_p0100_00.jpg']})
    with pytest.raises(UserError, match='c16'):
        MSSL(root)


def test_eval_split_errors(tmp_path):
    ds = MSSL(basic_mssl(tmp_path / 'm'))
    with pytest.raises(UserError, match='XYZ'):
        ds.eval_split('XYZ')
    root = make_tree(tmp_path / 'mk', {
        'bounding_box_train': ['0002_c1s1_000451_03.jpg', '0007_c2s1_000100_01.jpg', '-1_c1s1_000001_00.jpg'],
        'query': ['0010_c1s1_000001_00.jpg'],
        'bounding_box_test': ['0010_c2s1_000001_00.jpg', '0000_c6s1_000001_00.jpg'],
    })
    market = Market1501(root)
    assert market.supported_modes == ('DDC',)
    assert market.num_train_pids == 2 and market.num_train_cams == 6
    assert market.train_by_view[1] == [] and len(market.train_by_view[0]) == 2
    assert len(market.eval_split('DDC')[1]) == 2
    with pytest.raises(UserError, match='market1501'):
        market.eval_split('S2G')


def test_mssl_mode_without_queries_of_a_view(tmp_path):
    root = basic_mssl(tmp_path, {'query': [mssl_name(100, 1)]})
    with pytest.raises(UserError, match='S2G'):
        MSSL(root).eval_split('S2G')


# ---- AG-ReID dataset ----

def test_agreid_splits_and_identities(tmp_path):
    root = make_tree(tmp_path, {
        'bounding_box_train': ['P0009T0001A0C0F0001.jpg', 'P0009T0001A0C3F0002.jpg', 'P0001T0005A1C3F0003.jpg'],
        'query_all_c0': ['P0006T0214A0C0F1831.jpg'],
        'query_all_c3': ['P0006T0214A1C3F0010.jpg'],
        'bounding_box_test_all_c0': ['P0006T0214A1C0F0020.jpg', 'P0007T0001A0C0F0001.jpg'],
        'bounding_box_test_all_c3': ['P0006T0214A0C3F0030.jpg', 'P0006T0214A1C3F0040.jpg'],
    })
    ds = AGReID(root)
    assert ds.num_train_pids == 2 and ds.num_train_cams == 4
    assert sorted((pid, cam, view) for _, pid, cam, view in ds.train) == [(0, 3, 0), (1, 0, 1), (1, 3, 0)]
    pid_of = {os.path.basename(p): pid for p, pid, _, _ in ds.query + ds.gallery}
    assert pid_of['P0006T0214A0C0F1831.jpg'] == pid_of['P0006T0214A0C3F0030.jpg']
    assert pid_of['P0006T0214A1C3F0010.jpg'] == pid_of['P0006T0214A1C0F0020.jpg'] == pid_of['P0006T0214A1C3F0040.jpg']
    assert pid_of['P0006T0214A0C0F1831.jpg'] != pid_of['P0006T0214A1C3F0010.jpg']
    assert len(set(pid_of.values())) == 3
    s2g_q, s2g_g = ds.eval_split('S2G')
    g2s_q, g2s_g = ds.eval_split('G2S')
    assert [os.path.basename(p) for p, *_ in s2g_q] == ['P0006T0214A0C0F1831.jpg']
    assert all(view == 0 for *_, view in s2g_g) and len(s2g_g) == 2
    assert all(view == 1 for *_, view in g2s_g) and len(g2s_g) == 2
    assert [view for *_, view in g2s_q] == [0]
    ddc_q, ddc_g = ds.eval_split('DDC')
    assert len(ddc_q) == 2 and len(ddc_g) == 4 and ddc_g == ds.gallery


def test_init_dataset(tmp_path):
    assert set(FACTORY) == {'mssl', 'agreid', 'market1501', 'agreid_v2', 'cargo', 'g2aps_reid', 'lagper', 'csv',
                            'msmt17', 'dukemtmcreid', 'occ_duke', 'veri', 'vehicleid'}
    assert isinstance(init_dataset('mssl', basic_mssl(tmp_path)), MSSL)
    with pytest.raises(UserError, match='agreid, agreid_v2, cargo, csv, dukemtmcreid, g2aps_reid, lagper, market1501, '
                                        'msmt17, mssl, occ_duke, vehicleid, veri'):
        init_dataset('cuhk03', str(tmp_path))


# ---- image loading ----

def test_image_dataset_reads_and_reports_bad_images(tmp_path):
    good = tmp_path / 'good.jpg'
    Image.new('RGB', (6, 10), (255, 0, 0)).save(good)
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'\xff\xd8\xff garbage')
    items = [(str(bad), 5, 2, 1), (str(good), 7, 3, 0)]
    img, pid, camid, view, path = ImageDataset(items)[1]
    assert isinstance(img, torch.Tensor) and img.shape == (3, 10, 6)
    assert (pid, camid, view, path) == (7, 3, 0, str(good))
    with pytest.raises(UserError, match='bad.jpg'):
        ImageDataset(items)[0]
    lenient = ImageDataset(items, transform=lambda im: im.size, skip_bad_images=True)
    assert lenient[0] == ((6, 10), 7, 3, 0, str(good))
    assert lenient.num_bad_images == 1
    with pytest.raises(UserError):
        ImageDataset([(str(bad), 1, 0, 0)], skip_bad_images=True)[0]


# ---- synthetic generator ----

def _digest(folder):
    digest = hashlib.sha256()
    for split in sorted(os.listdir(folder)):
        for name in sorted(os.listdir(os.path.join(folder, split))):
            digest.update(name.encode())
            digest.update(open(os.path.join(folder, split, name), 'rb').read())
    return digest.hexdigest()


def test_generator_layout(tmp_path):
    summary = generate(str(tmp_path), train_ids=3, test_ids=4, images_per_view=3, seed=1)
    assert sorted(os.listdir(tmp_path)) == ['bounding_box_test', 'bounding_box_train', 'query']
    assert summary['train_images'] == 3 * 2 * 3
    assert summary['query_images'] == 4 * 2 and summary['gallery_images'] == 4 * 2 * 2
    ds = MSSL(str(tmp_path))  # every name parses
    train_pids = {int(os.path.basename(p)[:4]) for p, *_ in ds.train}
    assert train_pids == {1, 2, 3}
    test_pids = {pid for _, pid, _, _ in ds.gallery}
    assert test_pids == {4, 5, 6, 7}
    for pid in test_pids:
        assert {view for _, p, _, view in ds.gallery if p == pid} == {0, 1}
        assert sorted(view for _, p, _, view in ds.query if p == pid) == [0, 1]
    for path, *_ in ds.train + ds.query + ds.gallery:
        fields = os.path.basename(path)[:-4].split('_')
        members = fields[5:-1]
        assert len(members) == int(fields[2]) and f'p{fields[0]}' in members
        assert fields[3].startswith('G') and fields[1][-2:] in ('am', 'pm')
    assert {cam for _, _, cam, _ in ds.train} <= set(range(15))
    with Image.open(ds.train[0][0]) as img:
        assert img.mode == 'RGB' and img.format == 'JPEG'


def test_generator_is_deterministic(tmp_path):
    kwargs = dict(train_ids=2, test_ids=2, images_per_view=2)
    generate(str(tmp_path / 'a'), seed=3, **kwargs)
    generate(str(tmp_path / 'b'), seed=3, **kwargs)
    generate(str(tmp_path / 'c'), seed=4, **kwargs)
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
    assert _digest(tmp_path / 'a') != _digest(tmp_path / 'c')


def test_generator_refuses_bad_arguments_and_existing_output(tmp_path, capsys):
    with pytest.raises(UserError, match='images-per-view'):
        generate(str(tmp_path / 'x'), images_per_view=1)
    synthetic_main([str(tmp_path / 'y'), '--train-ids', '1', '--test-ids', '1', '--images-per-view', '2'])
    assert 'train 1 ids' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        synthetic_main([str(tmp_path / 'y'), '--train-ids', '1', '--test-ids', '1', '--images-per-view', '2'])
    assert exit_info.value.code == 2
    assert '--overwrite' in capsys.readouterr().err
    generate(str(tmp_path / 'y'), train_ids=2, test_ids=1, images_per_view=2, overwrite=True)
    assert len(os.listdir(tmp_path / 'y' / 'bounding_box_train')) == 2 * 2 * 2


def test_loaders_normalise_with_the_configured_statistics(tiny_mssl):
    """(pixel / 255 - INPUT.PIXEL_MEAN) / INPUT.PIXEL_STD per channel, in the test and the training loader
    (augmentation off), with statistics that tell mean from std and channel from channel."""
    import numpy as np
    import torchvision.transforms as T
    from config import load_config
    from datasets.make_dataloader import make_ordered_loader, make_train_loader
    from tests.helpers import tiny_opts
    mean, std = [0.1, 0.3, 0.6], [0.7, 0.4, 0.2]
    cfg = load_config('', tiny_opts(tiny_mssl, 'unused', 'INPUT.PIXEL_MEAN', str(mean), 'INPUT.PIXEL_STD', str(std),
                                    'INPUT.PROB', '0.0', 'INPUT.PADDING', '0', 'INPUT.RE_PROB', '0.0'))
    items, cpu = init_dataset('mssl', tiny_mssl).train, torch.device('cpu')
    for loader, interpolation in ((make_ordered_loader(loader_settings(cfg), items[:4], cpu), T.InterpolationMode.BILINEAR),
                                  (make_train_loader(loader_settings(cfg), items, cpu), T.InterpolationMode.BICUBIC)):
        images, _, _, _, paths = next(iter(loader))
        for image, path in zip(images[:3], paths):
            pixels = np.array(T.Resize(list(cfg.INPUT.SIZE_TEST), interpolation)(Image.open(path).convert('RGB')))
            expected = (torch.from_numpy(pixels).permute(2, 0, 1) / 255 - torch.tensor(mean)[:, None, None]) \
                / torch.tensor(std)[:, None, None]
            assert float((image - expected).abs().max()) < 1e-5, path
