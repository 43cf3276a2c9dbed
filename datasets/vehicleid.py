"""PKU VehicleID: 26,267 vehicles, no camera labels; a test list per size, random single-image galleries."""
from __future__ import annotations

import os

import numpy as np

from utils.errors import UserError
from utils.vocabulary import REMOVE_NOTHING, TRIAL_PREFIX, TRIALS

from .bases import DatasetOptions, ReIDDataset, locate_dataset_folder, read_labelled_list
from .protocols import Item, Protocol
from .veri import VEHICLE_PROMPT

TEST_SIZES = (800, 1600, 2400)
SPLIT_FOLDER = 'train_test_split'
CAMERA = 0  # VehicleID has no camera labels
VIEW = 0


def draw_gallery(num_images: list[int], seed: int, trial: int) -> list[int]:
    """For each test vehicle (with that many images), the index of its one gallery image in a trial;
    a function of (seed, trial) only."""
    rng = np.random.default_rng([seed, trial])
    return [int(rng.integers(count)) for count in num_images]


class VehicleID(ReIDDataset):
    """VehicleID in DATASETS.ROOT_DIR/VehicleID_V1.0 (CLIP-ReID's layout) or ROOT_DIR itself: image/
    (`<name>.jpg`) and train_test_split/ with train_list.txt and test_list_<size>.txt, lines
    `<name> <vehicle>`.

    Training: every image of train_list.txt. Test (DATASETS.VEHICLEID_TEST_SIZE 800, 1600 or 2400):
    each test vehicle gets one random gallery image, its other images are queries, and nothing is
    removed from the gallery. The draw is repeated TEST.VEHICLEID_TRIALS times from SOLVER.SEED;
    draw k is the protocol trial<k>, and together they are reported as the mean and sample standard
    deviation `trials`. `query` and `gallery` are those of trial1."""

    name = 'vehicleid'

    @staticmethod
    def view_name(viewid: int) -> str:
        return ''  # one unnamed view
    protocol_names = None  # trial1 ... trial<N>: N is TEST.VEHICLEID_TRIALS
    num_train_views = 1
    sky_ground_views = False
    prompt_template = VEHICLE_PROMPT

    @classmethod
    def from_options(cls, root: str, options: DatasetOptions) -> 'VehicleID':
        return cls(root, options.vehicleid_test_size, options.vehicleid_trials, options.seed)

    def __init__(self, root: str, test_size: int = 800, trials: int = 10, seed: int = 0):
        super().__init__(root)
        if test_size not in TEST_SIZES:
            raise UserError(f"DATASETS.VEHICLEID_TEST_SIZE = {test_size}: must be one of "
                            f"{', '.join(map(str, TEST_SIZES))}")
        self.root, _ = locate_dataset_folder(self.root, ('VehicleID_V1.0', ''), ('image',), 'VehicleID')
        split = os.path.join(self.root, SPLIT_FOLDER)
        train = self._read_list(os.path.join(split, 'train_list.txt'))
        test = self._read_list(os.path.join(split, f'test_list_{test_size}.txt'))
        by_vehicle: dict[int, list[Item]] = {}
        for item in test:
            by_vehicle.setdefault(item[1], []).append(item)
        groups = list(by_vehicle.values())
        protocols = {}
        for trial in range(1, trials + 1):
            picks = draw_gallery([len(group) for group in groups], seed, trial)
            gallery = [group[pick] for group, pick in zip(groups, picks)]
            query = [item for group, pick in zip(groups, picks) for index, item in enumerate(group) if index != pick]
            protocols[f'{TRIAL_PREFIX}{trial}'] = Protocol(query, gallery, REMOVE_NOTHING)
        if not protocols[f'{TRIAL_PREFIX}1'].query:
            raise UserError(f"test_list_{test_size}.txt has no vehicle with two images, so no query")
        first = protocols[f'{TRIAL_PREFIX}1']
        self._finish(train, first.query, first.gallery, protocols)
        self.summaries = {TRIALS: tuple(protocols)}

    def _read_list(self, list_path: str) -> list[Item]:
        items = []
        for name, vehicle in read_labelled_list(list_path, 'vehicleid'):
            path = os.path.join(self.root, 'image', f'{name}.jpg')
            if not os.path.isfile(path):
                raise UserError(f"{list_path}: image '{path}' does not exist")
            items.append((path, vehicle, CAMERA, VIEW))
        return items
