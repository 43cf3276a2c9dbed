"""VeRi-776: 776 vehicles, 20 cameras; viewpoint labels from the VehicleReIDKeyPointData files."""
from __future__ import annotations

import os
import re

from utils.errors import UserError
from utils.vocabulary import DDC, SAME_CAMERA

from .bases import ReIDDataset, locate_dataset_folder, parse_pid_camera
from .protocols import Item, Protocol

NUM_CAMERAS = 20
VEHICLE_PROMPT = 'A photo of a X X X X vehicle.'
# Viewpoint annotations (github.com/Zhongdao/VehicleReIDKeyPointData), optional, in the VeRi folder.
VIEWPOINT_FILES = ('keypoint_train.txt', 'keypoint_test.txt')
SINGLE_VIEW = 0
_NAME = re.compile(r'(-1|\d+)_c(\d+)')


def parse_veri_name(filename: str) -> tuple[int, int, int]:
    """(pid, camid, viewid) of a name like `0002_c002_00030600_0.jpg`; pid -1 marks junk. The view is
    the single view; read_viewpoints gives the annotated ones."""
    pid, camid = parse_pid_camera(filename, _NAME, 'VeRi-776', '0002_c002_00030600_0.jpg', NUM_CAMERAS)
    return pid, camid, SINGLE_VIEW


def read_viewpoints(path: str) -> dict[str, int]:
    """{image file name: viewpoint} of a keypoint file: an image path first and the viewpoint last on
    each line (the keypoint coordinates between them are not used)."""
    viewpoints = {}
    with open(path, encoding='utf-8') as handle:
        for number, line in enumerate(handle.read().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or not fields[-1].isdigit():
                raise UserError(f"{path} line {number}: expected an image path first and a viewpoint number last")
            viewpoints[os.path.basename(fields[0])] = int(fields[-1])
    return viewpoints


class VeRi(ReIDDataset):
    """VeRi-776: image_train, image_query, image_test in DATASETS.ROOT_DIR/VeRi (CLIP-ReID's layout)
    or ROOT_DIR itself. One protocol, DDC: the query's vehicle in its camera removed.

    Viewpoints: when the VeRi folder holds keypoint_train.txt and keypoint_test.txt, each image's view
    is its annotated viewpoint and images without an annotation are left out, as CLIP-ReID does;
    without the two files every image has one view."""

    name = 'veri'
    protocol_names = (DDC,)
    parse_name = staticmethod(parse_veri_name)

    @staticmethod
    def camera_name(camid: int) -> str:
        return f'c{camid + 1:03d}'

    @staticmethod
    def view_name(viewid: int) -> str:
        return f'viewpoint {viewid}'
    sky_ground_views = False
    prompt_template = VEHICLE_PROMPT

    def __init__(self, root: str):
        super().__init__(root)
        self.root, _ = locate_dataset_folder(self.root, ('VeRi', ''), ('image_train',), 'VeRi-776')
        viewpoints = self._viewpoints()
        train, query, gallery = (self._with_viewpoints(folder, viewpoints)
                                 for folder in ('image_train', 'image_query', 'image_test'))
        self.num_train_views = 1 + max(item[3] for item in train + query + gallery)
        self._finish(train, query, gallery, {DDC: Protocol(query, gallery, SAME_CAMERA)})

    @property
    def view_names(self) -> dict[int, str]:
        return {view: f'viewpoint {view}' for view in range(self.num_train_views)}

    def _viewpoints(self) -> dict[str, int] | None:
        paths = [os.path.join(self.root, file) for file in VIEWPOINT_FILES]
        present = [os.path.isfile(path) for path in paths]
        if not any(present):
            return None
        if not all(present):
            missing = paths[present.index(False)]
            raise UserError(f"viewpoint file '{missing}' does not exist; VeRi-776 reads its viewpoints from both "
                            f"{' and '.join(VIEWPOINT_FILES)} (or from neither: one view)")
        train_views, test_views = (read_viewpoints(path) for path in paths)
        return {**test_views, **train_views}  # a name in both files: the training annotation, as CLIP-ReID

    def _with_viewpoints(self, folder: str, viewpoints: dict[str, int] | None) -> list[Item]:
        """The items of a split folder with their annotated viewpoints (unannotated ones left out)."""
        items = self._read_split(folder)
        if viewpoints is None:
            return items
        annotated = [(path, pid, camid, viewpoints[os.path.basename(path)])
                     for path, pid, camid, _ in items if os.path.basename(path) in viewpoints]
        if not annotated:
            raise UserError(f"no image of '{os.path.join(self.root, folder)}' has a viewpoint in "
                            f"{' or '.join(VIEWPOINT_FILES)}")
        return annotated
