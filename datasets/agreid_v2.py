"""AG-ReID.v2: a UAV (C0, sky), a wearable camera (C2) and CCTV (C3, both ground); protocol lists."""
from __future__ import annotations

import os

from utils.errors import UserError
from utils.vocabulary import SAME_CAMERA

from .agreid import _NAME
from .bases import GROUND, SKY, ReIDDataset
from .protocols import Protocol, all_query_and_gallery, read_protocol_lists

CAMERA_VIEW = {0: SKY, 2: GROUND, 3: GROUND}
INNER_FOLDER = 'AG-ReID.v2'
PROTOCOL_LISTS = {
    'A2C': 'exp1_aerial_to_cctv.txt',
    'A2W': 'exp2_aerial_to_wearable.txt',
    'C2A': 'exp4_cctv_to_aerial.txt',
    'W2A': 'exp5_wearable_to_aerial.txt',
}


def parse_agreid_v2_name(filename: str) -> tuple[tuple[int, int, int], int, int]:
    """((P, T, A) identity, camid, viewid) of a name like `P0006T0214A0C2F1831.jpg`."""
    name = os.path.basename(filename)
    match = _NAME.fullmatch(os.path.splitext(name)[0])
    if match is None:
        raise UserError(f"AG-ReID.v2 file name '{name}' does not look like P0006T0214A0C0F1831.jpg")
    person, clip, attribute, camera, _frame = (int(group) for group in match.groups())
    if camera not in CAMERA_VIEW:
        raise UserError(f"AG-ReID.v2 file name '{name}' has the unknown camera C{camera} "
                        f"(known: C0 = UAV, C2 = wearable, C3 = CCTV)")
    return (person, clip, attribute), camera, CAMERA_VIEW[camera]


class AGReIDv2(ReIDDataset):
    """AG-ReID.v2 with DATASETS.ROOT_DIR = the outer `AG-ReID.v2/` folder, which holds the protocol
    lists and an inner `AG-ReID.v2/` with train_all/, query/, gallery/ (one subfolder per identity).

    List lines are paths relative to the inner folder; lines under query/ are queries. The lists pick
    subsets of identities, so every protocol comes from its list (those present are declared), and a
    query's gallery images of the same identity and camera are removed. An identity is the (P, T, A)
    triple; test identities get ints from the sorted triples of all lists together.
    """

    name = 'agreid_v2'
    protocol_names = tuple(PROTOCOL_LISTS)
    parse_name = staticmethod(parse_agreid_v2_name)

    @staticmethod
    def camera_name(camid: int) -> str:
        return f'C{camid}'

    def __init__(self, root: str):
        super().__init__(root)
        inner = os.path.join(self.root, INNER_FOLDER)
        if not os.path.isdir(inner):
            raise UserError(f"dataset folder '{inner}' does not exist (agreid_v2 reads DATASETS.ROOT_DIR/AG-ReID.v2)")
        train = self._read_split(os.path.join(INNER_FOLDER, 'train_all'), nested=True)
        raw = read_protocol_lists(root, inner, PROTOCOL_LISTS, 'AG-ReID.v2', self.parse_name)
        identities = sorted({item[1] for query, gallery in raw.values() for item in (*query, *gallery)})
        pid_of = {identity: pid for pid, identity in enumerate(identities)}

        def relabel(items):
            return [(path, pid_of[identity], camid, viewid) for path, identity, camid, viewid in items]

        protocols = {name: Protocol(relabel(query), relabel(gallery), SAME_CAMERA)
                     for name, (query, gallery) in raw.items()}
        query, gallery = all_query_and_gallery(protocols)
        self._finish(train, query, gallery, protocols)
