"""MSSL (Multi-Source Sky-Land person re-ID): 15 cameras, 9 on the ground and 6 in the sky."""
from __future__ import annotations

import os
import re

from utils.errors import UserError
from utils.vocabulary import MSSL_REMOVAL

from .bases import GROUND, SKY, Item, ReIDDataset

GROUND_CAMERAS = (1, 2, 3, 6, 7, 8, 11, 12, 13)
SKY_CAMERAS = (4, 5, 9, 10, 14, 15)
CAMERA_VIEW = {**{cam: GROUND for cam in GROUND_CAMERAS}, **{cam: SKY for cam in SKY_CAMERAS}}

_CAMERA_FIELD = re.compile(r'c(\d+)')
_TIME_FIELD = re.compile(r'(\d{2})(\d{2})(am|pm)')


def parse_mssl_name(filename: str) -> tuple[int, int, int]:
    """(pid, camid, viewid) of an MSSL file name such as `0065_0909am_3_G003_c05_p0065_p0115_p0167_00.jpg`.

    pid: the digits before the first '_' (-1 = junk); camid: the fifth field `cNN`, minus one.
    """
    name = os.path.basename(filename)
    fields = os.path.splitext(name)[0].split('_')
    if len(fields) < 5:
        raise UserError(f"MSSL file name '{name}' has {len(fields)} '_'-separated fields, expected at least 5 "
                        f"(like 0065_0909am_3_G003_c05_p0065_00.jpg)")
    pid_field, camera_field = fields[0], fields[4]
    if pid_field == '-1':
        pid = -1
    elif pid_field.isdigit():
        pid = int(pid_field)
    else:
        raise UserError(f"MSSL file name '{name}' does not start with a numeric person id")
    match = _CAMERA_FIELD.fullmatch(camera_field)
    if match is None:
        raise UserError(f"MSSL file name '{name}' has '{camera_field}' as its fifth field, expected a camera like c05")
    camera = int(match.group(1))
    if camera not in CAMERA_VIEW:
        raise UserError(f"MSSL file name '{name}' has the unknown camera '{camera_field}' (known: c01-c15)")
    return pid, camera - 1, CAMERA_VIEW[camera]


def parse_mssl_hour(filename: str) -> int:
    """The hour of capture (0-23) that an MSSL file name's second field gives (`0909am` -> 9, `0325pm` -> 15,
    `1210pm` -> 12), or -1 when the field is not a time."""
    fields = os.path.splitext(os.path.basename(filename))[0].split('_')
    match = _TIME_FIELD.fullmatch(fields[1]) if len(fields) > 1 else None
    if match is None or not 1 <= int(match.group(1)) <= 12 or int(match.group(2)) > 59:
        return -1
    return int(match.group(1)) % 12 + (12 if match.group(3) == 'pm' else 0)


class MSSL(ReIDDataset):
    """MSSL under `root`: bounding_box_train, query, bounding_box_test.

    Optional `query_air` / `query_ground` folders define the S2G / G2S query sets; otherwise they are the
    sky / ground images of `query`. DDC uses all of `query`; every mode uses `bounding_box_test`.
    Optional `bounding_box_train_air` / `bounding_box_train_ground` define `train_by_view`.
    """

    name = 'mssl'
    protocol_names = tuple(MSSL_REMOVAL)
    parse_name = staticmethod(parse_mssl_name)
    capture_hour = staticmethod(parse_mssl_hour)

    @staticmethod
    def camera_name(camid: int) -> str:
        return f'c{camid + 1:02d}'

    def __init__(self, root: str):
        super().__init__(root)
        train = self._read_split('bounding_box_train')
        query = self._read_split('query')
        gallery = self._read_split('bounding_box_test')
        sky_query = self._view_query('query_air', SKY, query)
        ground_query = self._view_query('query_ground', GROUND, query)
        self._finish(train, query, gallery, {
            'S2G': (sky_query, gallery),
            'G2S': (ground_query, gallery),
            'DDC': (query, gallery),
        })

    def _view_query(self, folder: str, view: int, query: list[Item]) -> list[Item]:
        items = self._read_split(folder, required=False)
        if items is None:
            return [item for item in query if item[3] == view]
        # The folder, not the camera, says which view these queries stand for.
        return [(path, pid, camid, view) for path, pid, camid, _ in items]
