"""CLIP-ReID's datasets: Market-1501 in CLIP-ReID's folder, MSMT17, DukeMTMC-reID, Occluded-Duke, VeRi-776
and VehicleID. Their counts equal those of CLIP-ReID's own readers on the same folders; layouts, the
vehicle prompt, VehicleID's gallery draws and bad input."""
import os
import shutil

import numpy as np
import pytest
import torch

from config import load_config
from datasets import init_dataset
from datasets.bases import DatasetOptions
from datasets.fixtures import generate
from evaluation.rank import evaluate
from tests.helpers import fails
from train_clipreid import main as train_main
from utils.errors import UserError
from utils.vocabulary import REMOVE_NOTHING, SAME_CAMERA

TRAIN_IDS, TEST_IDS = 4, 3

# Counts of CLIP-ReID's reader classes (github.com/Syliz517/CLIP-ReID at eb1898b, datasets/*.py, run
# unchanged from a scratch folder) on the folders `python -m datasets.fixtures NAME OUT --train-ids 4
# --test-ids 3` writes: per split (identities, images, cameras, views) from its get_imagedata_info, and
# the valid queries counted by its utils/metrics.eval_func (random distances; the function's own
# num_valid_q, read when it returns). VeRi: with the fixture's keypoint files copied into datasets/ of
# the working folder, where CLIP-ReID reads them. VehicleID: run under `python -O`, which skips its
# asserts that the lists hold 13,164 training and exactly 800 / 1,600 / 2,400 test vehicles.
CLIP_REID_TERMS = ['MODEL.I2T_TEXT_VIEWS', "('all',)", 'MODEL.I2T_IMAGE_VIEWS', "('all',)",
                   'MODEL.I2T_LOSS_WEIGHTS', '(1.0,)']
CLIPREID_COUNTS = {
    'market1501': ({'train': (4, 16, 6, 1), 'query': (3, 3, 3, 1), 'gallery': (4, 8, 4, 1)}, 2),
    'msmt17': ({'train': (4, 20, 11, 1), 'query': (3, 3, 3, 1), 'gallery': (3, 7, 4, 1)}, 2),
    'dukemtmcreid': ({'train': (4, 16, 7, 1), 'query': (3, 3, 3, 1), 'gallery': (4, 8, 4, 1)}, 2),
    'occ_duke': ({'train': (4, 16, 7, 1), 'query': (3, 3, 3, 1), 'gallery': (4, 8, 4, 1)}, 2),
    'veri': ({'train': (4, 15, 13, 8), 'query': (3, 3, 3, 2), 'gallery': (3, 9, 4, 8)}, 2),
    800: ({'train': (4, 16, 1, 1), 'query': (3, 6, 1, 1), 'gallery': (3, 3, 1, 1)}, 6),
    1600: ({'train': (4, 16, 1, 1), 'query': (5, 11, 1, 1), 'gallery': (6, 6, 1, 1)}, 11),
    2400: ({'train': (4, 16, 1, 1), 'query': (7, 15, 1, 1), 'gallery': (9, 9, 1, 1)}, 15),
}


@pytest.fixture(scope='module')
def fixture_copy(tmp_path_factory):
    """A fresh copy of a dataset's fixture (generated once per module), safe to change."""
    originals = {}

    def copy(name: str) -> str:
        if name not in originals:
            originals[name] = generate(name, str(tmp_path_factory.mktemp(name) / 'data'), TRAIN_IDS, TEST_IDS)
        target = tmp_path_factory.mktemp(f'{name}_copy') / 'data'
        shutil.copytree(originals[name], target)
        return str(target)
    return copy


def counts(items):
    return len({i[1] for i in items}), len(items), len({i[2] for i in items}), len({i[3] for i in items})


def valid_queries(query, gallery, removal):
    features = torch.randn(len(query) + len(gallery), 8, generator=torch.Generator().manual_seed(0))
    columns = [np.array([item[k] for item in items]) for k in (1, 2, 3) for items in (query, gallery)]
    q_pids, g_pids, q_cams, g_cams, q_views, g_views = columns
    return evaluate(features[:len(query)], features[len(query):], q_pids, g_pids, q_cams, g_cams, q_views, g_views,
                    'x', removal=removal)['num_valid_query']


@pytest.mark.parametrize('name', ['market1501', 'msmt17', 'dukemtmcreid', 'occ_duke', 'veri'])
def test_counts_equal_clipreids_readers(fixture_copy, name):
    dataset = init_dataset(name, fixture_copy(name))
    splits, valid = CLIPREID_COUNTS[name]
    assert {split: counts(getattr(dataset, split)) for split in splits} == splits
    assert dataset.num_train_pids == splits['train'][0]
    assert valid_queries(dataset.query, dataset.gallery, dataset.removal_rule('DDC')) == valid
    assert dataset.removal_rule('DDC') == SAME_CAMERA and dataset.supported_modes == ('DDC',)


@pytest.mark.parametrize('size', [800, 1600, 2400])
def test_vehicleid_counts_equal_clipreids_reader_in_every_draw(fixture_copy, size):
    dataset = init_dataset('vehicleid', fixture_copy('vehicleid'), DatasetOptions(vehicleid_test_size=size,
                                                                                  vehicleid_trials=4))
    splits, valid = CLIPREID_COUNTS[size]
    assert counts(dataset.train) == splits['train']
    assert dataset.supported_modes == ('trial1', 'trial2', 'trial3', 'trial4')
    assert dataset.summaries == {'trials': dataset.supported_modes}
    for protocol in dataset.supported_modes:
        query, gallery = dataset.eval_split(protocol)
        # CLIP-ReID gives queries camera 0 and the gallery camera 1 so that nothing is removed; here
        # both are the one camera and the protocol removes nothing.
        assert counts(query)[:2] == splits['query'][:2] and counts(gallery)[:2] == splits['gallery'][:2]
        assert valid_queries(query, gallery, dataset.removal_rule(protocol)) == valid
        assert dataset.removal_rule(protocol) == REMOVE_NOTHING


def test_vehicleid_draws_one_gallery_image_per_vehicle_from_the_seed(fixture_copy):
    root = fixture_copy('vehicleid')

    def draws(seed):
        options = DatasetOptions(vehicleid_test_size=1600, vehicleid_trials=3, seed=seed)
        dataset = init_dataset('vehicleid', root, options)
        return [tuple(item[0] for item in dataset.eval_split(p)[1]) for p in dataset.supported_modes], dataset

    first, dataset = draws(1)
    assert first == draws(1)[0]                  # the same seed draws the same galleries
    assert len(set(first)) == 3                  # each trial draws anew
    assert first != draws(2)[0]
    with open(os.path.join(root, 'VehicleID_V1.0', 'train_test_split', 'test_list_1600.txt')) as handle:
        listed = [line.split() for line in handle.read().splitlines()]
    for protocol in dataset.supported_modes:
        query, gallery = dataset.eval_split(protocol)
        assert sorted(os.path.basename(i[0]) for i in query + gallery) == sorted(f'{n}.jpg' for n, _ in listed)
        assert len(gallery) == len({i[1] for i in gallery}) == len({v for _, v in listed})
        assert {i[1] for i in query} < {i[1] for i in gallery}  # a one-image vehicle is only in the gallery


def test_msmt17_reads_the_v1_and_v2_folder_names(fixture_copy):
    expected = CLIPREID_COUNTS['msmt17'][0]
    for folder, train, test in (('MSMT17_V1', 'train', 'test'), ('MSMT17_V2', 'mask_train_v2', 'mask_test_v2'),
                                ('', 'train', 'test')):
        root = fixture_copy('msmt17')
        inner = os.path.join(root, folder)
        if folder:
            os.rename(os.path.join(root, 'MSMT17'), inner)
        else:
            root = os.path.join(root, 'MSMT17')  # DATASETS.ROOT_DIR = the release folder itself
            inner = root
        os.rename(os.path.join(inner, 'train'), os.path.join(inner, train))
        os.rename(os.path.join(inner, 'test'), os.path.join(inner, test))
        dataset = init_dataset('msmt17', root)
        assert {split: counts(getattr(dataset, split)) for split in expected} == expected
        assert all(f'{os.sep}{train}{os.sep}' in item[0] for item in dataset.train)


def test_veri_without_viewpoint_files_has_one_view_and_keeps_every_image(fixture_copy):
    root = fixture_copy('veri')
    annotated = init_dataset('veri', root)
    assert annotated.num_train_views == 8 and annotated.view_names[7] == 'viewpoint 7'
    for file in ('keypoint_train.txt', 'keypoint_test.txt'):
        os.remove(os.path.join(root, 'VeRi', file))
    plain = init_dataset('veri', root)
    assert plain.num_train_views == 1 and {item[3] for item in plain.train + plain.gallery} == {0}
    # The fixture leaves one training and one test image out of the keypoint files.
    assert len(plain.train) == len(annotated.train) + 1 and len(plain.gallery) == len(annotated.gallery) + 1


def test_duke_and_market_read_clipreids_folders_or_the_dataset_folder_itself(fixture_copy):
    for name, inner in (('dukemtmcreid', 'dukemtmcreid/DukeMTMC-reID'), ('occ_duke', 'dukemtmcreid/Occluded_Duke'),
                        ('market1501', 'Market-1501-v15.09.15')):
        root = fixture_copy(name)
        assert init_dataset(name, os.path.join(root, inner)).root == init_dataset(name, root).root
    with pytest.raises(UserError, match=r"holds no Occluded_Duke dataset: expected .*dukemtmcreid/Occluded_Duke/"
                                        r"bounding_box_train or"):
        init_dataset('occ_duke', fixture_copy('dukemtmcreid'))


@pytest.mark.parametrize('name, removed, config', [
    ('msmt17', 'MSMT17/list_gallery.txt', []),
    ('msmt17', 'MSMT17/list_val.txt', []),
    ('vehicleid', 'VehicleID_V1.0/train_test_split/train_list.txt', []),
    ('vehicleid', 'VehicleID_V1.0/train_test_split/test_list_1600.txt', ['DATASETS.VEHICLEID_TEST_SIZE', '1600']),
    ('veri', 'VeRi/keypoint_test.txt', []),
])
def test_a_missing_list_file_is_one_error_line_naming_it(fixture_copy, tmp_path, capsys, name, removed, config):
    root = fixture_copy(name)
    os.remove(os.path.join(root, removed))
    line = fails(train_main, ['DATASETS.NAMES', name, 'DATASETS.ROOT_DIR', root, 'OUTPUT_DIR', str(tmp_path / 'out'),
                              *CLIP_REID_TERMS, *config], capsys)
    assert f"'{os.path.join(root, removed)}' does not exist" in line


def test_bad_list_lines_and_missing_images_name_the_file(fixture_copy):
    root = fixture_copy('msmt17')
    list_path = os.path.join(root, 'MSMT17', 'list_query.txt')
    with open(list_path, 'a') as handle:
        handle.write('0000/0000_099_01_0303morning_0099_0.jpg\n')
    with pytest.raises(UserError, match=rf"{list_path} line 4: expected '<image> <identity number>'"):
        init_dataset('msmt17', root)
    root = fixture_copy('vehicleid')
    with open(os.path.join(root, 'VehicleID_V1.0', 'train_test_split', 'train_list.txt'), 'a') as handle:
        handle.write('9999999 12\n')
    with pytest.raises(UserError, match=r"image '.*9999999.jpg' does not exist"):
        init_dataset('vehicleid', root)


def test_vehicle_datasets_choose_the_vehicle_prompt_and_refuse_sky_ground_terms():
    clip_reid = CLIP_REID_TERMS
    for name in ('veri', 'vehicleid', 'VehicleID'):
        cfg = load_config('', ['DATASETS.NAMES', name, *clip_reid])
        assert cfg.MODEL.PROMPT_TEMPLATE == 'A photo of a X X X X vehicle.'
        with pytest.raises(UserError, match=r"MODEL.I2T_TEXT_VIEWS = \('ground', 'sky', 'all'\): dataset '\w+' has no "
                                            r"sky and ground views"):
            load_config('', ['DATASETS.NAMES', name])
    for name in ('market1501', 'msmt17', 'dukemtmc', 'occ_duke', 'mssl'):
        assert load_config('', ['DATASETS.NAMES', name]).MODEL.PROMPT_TEMPLATE == 'A photo of a X X X X person.'
    assert load_config('', ['DATASETS.NAMES', 'dukemtmc']).DATASETS.NAMES == 'dukemtmcreid'
    chosen = load_config('', ['DATASETS.NAMES', 'veri', 'MODEL.PROMPT_TEMPLATE', 'A photo of a X X X X car.',
                              *clip_reid])
    assert chosen.MODEL.PROMPT_TEMPLATE == 'A photo of a X X X X car.'
    # terms of weight 0 are not used, whatever views they name
    no_text = load_config('', ['DATASETS.NAMES', 'veri', 'MODEL.I2T_LOSS_WEIGHTS', '(0.0, 0.0, 0.0)'])
    assert tuple(no_text.MODEL.I2T_TEXT_VIEWS) == ('ground', 'sky', 'all')


def test_vehicleid_settings_are_checked():
    with pytest.raises(UserError, match='DATASETS.VEHICLEID_TEST_SIZE'):
        load_config('', ['DATASETS.VEHICLEID_TEST_SIZE', '3200'])
    with pytest.raises(UserError, match='TEST.VEHICLEID_TRIALS'):
        load_config('', ['TEST.VEHICLEID_TRIALS', '0'])
