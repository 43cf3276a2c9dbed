"""AG-ReID v1 (aerial-ground person re-ID): UAV camera C0 (sky) and CCTV camera C3 (ground)."""
from __future__ import annotations

import os
import re

from utils.errors import UserError
from utils.vocabulary import MSSL_REMOVAL

from .bases import GROUND, SKY, Item, ReIDDataset

CAMERA_VIEW = {0: SKY, 3: GROUND}

_NAME = re.compile(r'P(\d+)T(\d+)A(\d+)C(\d+)F(\d+)')


def parse_agreid_name(filename: str) -> tuple[tuple[int, int, int], int, int]:
    """((P, T, A) identity, camid, viewid) of a name like `P0006T0214A0C0F1831.jpg`."""
    name = os.path.basename(filename)
    match = _NAME.fullmatch(os.path.splitext(name)[0])
    if match is None:
        raise UserError(f"AG-ReID file name '{name}' does not look like P0006T0214A0C0F1831.jpg")
    person, clip, attribute, camera, _frame = (int(group) for group in match.groups())
    if camera not in CAMERA_VIEW:
        raise UserError(f"AG-ReID file name '{name}' has the unknown camera C{camera} (known: C0 = UAV, C3 = CCTV)")
    return (person, clip, attribute), camera, CAMERA_VIEW[camera]


class AGReID(ReIDDataset):
    """AG-ReID v1 under `root`: bounding_box_train, query_all_c0 + bounding_box_test_all_c3 (S2G),
    query_all_c3 + bounding_box_test_all_c0 (G2S); DDC uses both query folders and both galleries.

    An identity is the (P, T, A) triple of the name. Test identities get ints from the sorted triples of
    all test folders together, so query and gallery agree.
    """

    name = 'agreid'
    protocol_names = tuple(MSSL_REMOVAL)
    parse_name = staticmethod(parse_agreid_name)

    @staticmethod
    def camera_name(camid: int) -> str:
        return f'C{camid}'

    def __init__(self, root: str):
        super().__init__(root)
        train = self._read_split('bounding_box_train')
        raw = {folder: self._read_split(folder) for folder in (
            'query_all_c0', 'query_all_c3', 'bounding_box_test_all_c0', 'bounding_box_test_all_c3')}
        identity_to_pid = {identity: pid for pid, identity in
                           enumerate(sorted({item[1] for items in raw.values() for item in items}))}
        test: dict[str, list[Item]] = {
            folder: [(path, identity_to_pid[identity], camid, viewid) for path, identity, camid, viewid in items]
            for folder, items in raw.items()}
        query = test['query_all_c0'] + test['query_all_c3']
        gallery = test['bounding_box_test_all_c0'] + test['bounding_box_test_all_c3']
        self._finish(train, query, gallery, {
            'S2G': (test['query_all_c0'], test['bounding_box_test_all_c3']),
            'G2S': (test['query_all_c3'], test['bounding_box_test_all_c0']),
            'DDC': (query, gallery),
        })
