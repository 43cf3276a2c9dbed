"""CARGO (synthetic, Unity3D): 13 cameras, Cam1-Cam5 aerial (sky), Cam6-Cam13 ground."""
from __future__ import annotations

import os
import re

from utils.errors import UserError
from utils.vocabulary import SAME_CAMERA, SAME_VIEW

from .bases import GROUND, SKY, ReIDDataset
from .protocols import Protocol

NUM_CAMERAS = 13
AERIAL_CAMERAS = range(1, 6)
_CAMERA_FIELD = re.compile(r'Cam(\d+)')


def parse_cargo_name(filename: str) -> tuple[int, int, int]:
    """(pid, camid, viewid) of a name like `Cam2_day_2519_320.jpg`: pid = third '_' field,
    camid = the number after `Cam`, minus one."""
    name = os.path.basename(filename)
    fields = os.path.splitext(name)[0].split('_')
    camera = _CAMERA_FIELD.fullmatch(fields[0]) if fields else None
    if len(fields) < 3 or camera is None or not fields[2].lstrip('-').isdigit():
        raise UserError(f"CARGO file name '{name}' does not look like Cam2_day_2519_320.jpg")
    number = int(camera.group(1))
    if not 1 <= number <= NUM_CAMERAS:
        raise UserError(f"CARGO file name '{name}' has the unknown camera Cam{number} (known: Cam1-Cam13)")
    return int(fields[2]), number - 1, SKY if number in AERIAL_CAMERAS else GROUND


class CARGO(ReIDDataset):
    """CARGO under DATASETS.ROOT_DIR: train/, query/, gallery/, each with Cam1/ ... Cam13/.

    Protocols: MIXED (the authors' "ALL": every query against the whole gallery), A2A and G2G (query
    and gallery of one view), all three removing same-person same-camera images; AG (the authors' A<->G:
    every query against the whole gallery, same-person images of the query's view removed); A2G and G2A
    (aerial queries against the ground gallery only, and the reverse).
    """

    name = 'cargo'
    protocol_names = ('MIXED', 'AG', 'A2G', 'G2A', 'A2A', 'G2G')
    parse_name = staticmethod(parse_cargo_name)

    @staticmethod
    def camera_name(camid: int) -> str:
        return f'Cam{camid + 1}'

    def __init__(self, root: str):
        super().__init__(root)
        train = self._read_split('train', nested=True)
        query = self._read_split('query', nested=True)
        gallery = self._read_split('gallery', nested=True)

        def of_view(items, view):
            return [item for item in items if item[3] == view]

        self._finish(train, query, gallery, {
            'MIXED': Protocol(query, gallery, SAME_CAMERA),
            'AG': Protocol(query, gallery, SAME_VIEW),
            'A2G': Protocol(of_view(query, SKY), of_view(gallery, GROUND), SAME_CAMERA),
            'G2A': Protocol(of_view(query, GROUND), of_view(gallery, SKY), SAME_CAMERA),
            'A2A': Protocol(of_view(query, SKY), of_view(gallery, SKY), SAME_CAMERA),
            'G2G': Protocol(of_view(query, GROUND), of_view(gallery, GROUND), SAME_CAMERA),
        })
