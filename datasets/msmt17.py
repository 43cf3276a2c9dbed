"""MSMT17 (V1 or V2): 15 cameras; the splits and identities come from its four list files."""
from __future__ import annotations

import os

from utils.errors import UserError
from utils.vocabulary import DDC, SAME_CAMERA

from .bases import GROUND, ReIDDataset, locate_dataset_folder, read_labelled_list
from .protocols import Item, Protocol

# The release folders, CLIP-ReID's name first, and each release's (train, test) image folders.
FOLDERS = ('MSMT17', 'MSMT17_V2', 'MSMT17_V1', '')
IMAGE_FOLDERS = {'train': 'test', 'mask_train_v2': 'mask_test_v2'}
LIST_FILES = ('list_train.txt', 'list_val.txt', 'list_query.txt', 'list_gallery.txt')
NUM_CAMERAS = 15


def parse_msmt17_camera(filename: str) -> int:
    """camid of a name like `0000_000_01_0303morning_0015_0.jpg`: the third '_' field, minus one."""
    name = os.path.basename(filename)
    fields = name.split('_')
    if len(fields) < 3 or not fields[2].isdigit():
        raise UserError(f"MSMT17 file name '{name}' does not look like 0000_000_01_0303morning_0015_0.jpg")
    camera = int(fields[2])
    if not 1 <= camera <= NUM_CAMERAS:
        raise UserError(f"MSMT17 file name '{name}' has the unknown camera {camera} (known: 1-{NUM_CAMERAS})")
    return camera - 1


class MSMT17(ReIDDataset):
    """MSMT17 under DATASETS.ROOT_DIR: a folder MSMT17/ (CLIP-ReID's name), MSMT17_V2/ or MSMT17_V1/, or
    the root itself, holding train/ + test/ (V1) or mask_train_v2/ + mask_test_v2/ (V2) and the lists
    list_train.txt, list_val.txt (both training), list_query.txt and list_gallery.txt.

    Each list line is `<path under the image folder> <identity>`; identities are the list's numbers,
    the camera is the third '_' field of the file name. Training is list_train plus list_val, as in
    CLIP-ReID. One protocol, DDC: the query's identity in its camera removed."""

    name = 'msmt17'
    protocol_names = (DDC,)
    num_train_views = 1

    @staticmethod
    def camera_name(camid: int) -> str:
        return f'c{camid + 1:02d}'  # the file names' third field, 01-15

    def __init__(self, root: str):
        super().__init__(root)
        folder, train_folder = locate_dataset_folder(self.root, FOLDERS, tuple(IMAGE_FOLDERS), 'MSMT17')
        test_folder = os.path.join(folder, IMAGE_FOLDERS[train_folder])
        if not os.path.isdir(test_folder):
            raise UserError(f"dataset folder '{test_folder}' does not exist (msmt17 needs it next to {train_folder})")
        lists = {}
        for list_file in LIST_FILES:  # every missing list is named before any is read
            lists[list_file] = os.path.join(folder, list_file)
            if not os.path.isfile(lists[list_file]):
                raise UserError(f"list file '{lists[list_file]}' does not exist (msmt17 needs "
                                f"{', '.join(LIST_FILES)} in {folder})")
        train_dir = os.path.join(folder, train_folder)
        train = (self._read_list(lists['list_train.txt'], train_dir)
                 + self._read_list(lists['list_val.txt'], train_dir))
        query = self._read_list(lists['list_query.txt'], test_folder)
        gallery = self._read_list(lists['list_gallery.txt'], test_folder)
        self._finish(train, query, gallery, {DDC: Protocol(query, gallery, SAME_CAMERA)})

    @staticmethod
    def _read_list(list_path: str, image_dir: str) -> list[Item]:
        items = []
        for relative, pid in read_labelled_list(list_path, 'msmt17'):
            path = os.path.join(image_dir, relative)
            if not os.path.isfile(path):
                raise UserError(f"{list_path}: image '{path}' does not exist")
            items.append((path, pid, parse_msmt17_camera(relative), GROUND))
        return items
