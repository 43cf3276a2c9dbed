"""DukeMTMC-reID and Occluded-Duke: eight cameras, Market-1501's folders and file names."""
from __future__ import annotations

import os
import re

from utils.vocabulary import DDC, SAME_CAMERA

from .bases import GROUND, ReIDDataset, locate_dataset_folder, parse_pid_camera
from .protocols import Protocol

NUM_CAMERAS = 8
_NAME = re.compile(r'(-1|\d+)_c(\d)')


def parse_duke_name(filename: str) -> tuple[int, int, int]:
    """(pid, camid, viewid) of a name like `0001_c2_f0046182.jpg` (one camera digit, c1-c8)."""
    pid, camid = parse_pid_camera(filename, _NAME, 'DukeMTMC-reID', '0001_c2_f0046182.jpg', NUM_CAMERAS)
    return pid, camid, GROUND


class DukeMTMCreID(ReIDDataset):
    """DukeMTMC-reID: bounding_box_train, query, bounding_box_test in DATASETS.ROOT_DIR/dukemtmcreid/
    DukeMTMC-reID (CLIP-ReID's layout), ROOT_DIR/DukeMTMC-reID or ROOT_DIR itself. One protocol, DDC:
    the query's identity in its camera removed."""

    name = 'dukemtmcreid'
    protocol_names = (DDC,)
    num_train_views = 1
    parse_name = staticmethod(parse_duke_name)

    @staticmethod
    def camera_name(camid: int) -> str:
        return f'c{camid + 1}'
    release_folder = 'DukeMTMC-reID'

    def __init__(self, root: str):
        super().__init__(root)
        folders = (os.path.join('dukemtmcreid', self.release_folder), self.release_folder, '')
        self.root, _ = locate_dataset_folder(self.root, folders, ('bounding_box_train',), self.release_folder)
        train = self._read_split('bounding_box_train')
        query = self._read_split('query')
        gallery = self._read_split('bounding_box_test')
        self._finish(train, query, gallery, {DDC: Protocol(query, gallery, SAME_CAMERA)})


class OccludedDuke(DukeMTMCreID):
    """Occluded-Duke: DukeMTMC-reID's identities re-split so that queries are occluded; the same
    folders inside DATASETS.ROOT_DIR/dukemtmcreid/Occluded_Duke (CLIP-ReID's layout),
    ROOT_DIR/Occluded_Duke or ROOT_DIR itself."""

    name = 'occ_duke'
    release_folder = 'Occluded_Duke'
