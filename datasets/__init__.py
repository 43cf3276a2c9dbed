"""Datasets by name: MSSL, AG-ReID v1 and v2, CARGO, G2APS-ReID, LAGPeR, CLIP-ReID's six (Market-1501,
MSMT17, DukeMTMC-reID, Occluded-Duke, VeRi-776, VehicleID) and CSV files."""
from utils.errors import UserError

from .agreid import AGReID
from .agreid_v2 import AGReIDv2
from .bases import DatasetOptions, ImageDataset, ReIDDataset
from .cargo import CARGO
from .csv_dataset import CSVDataset
from .dukemtmcreid import DukeMTMCreID, OccludedDuke
from .g2aps_reid import G2APSReID
from .lagper import LAGPeR
from .market1501 import Market1501
from .msmt17 import MSMT17
from .mssl import MSSL
from .protocols import Protocol
from .vehicleid import VehicleID
from .veri import VeRi

FACTORY: dict[str, type[ReIDDataset]] = {
    'mssl': MSSL, 'agreid': AGReID, 'market1501': Market1501, 'agreid_v2': AGReIDv2, 'cargo': CARGO,
    'g2aps_reid': G2APSReID, 'lagper': LAGPeR, 'csv': CSVDataset, 'msmt17': MSMT17, 'dukemtmcreid': DukeMTMCreID,
    'occ_duke': OccludedDuke, 'veri': VeRi, 'vehicleid': VehicleID,
}
# CLIP-ReID's names for two of them, accepted in DATASETS.NAMES / TEST_NAMES (config/__init__.py
# replaces them by these names).
ALIASES = {'dukemtmc': 'dukemtmcreid', 'VehicleID': 'vehicleid'}


def camera_name(dataset_name: str, camid: int) -> str:
    """Camera `camid` of dataset `dataset_name` (DATASETS.NAMES) as its file names write it ('c05')."""
    return FACTORY.get(ALIASES.get(dataset_name, dataset_name), ReIDDataset).camera_name(int(camid))


def view_name(dataset_name: str, viewid: int) -> str:
    """View `viewid` of dataset `dataset_name` as pictures and tables name it ('sky', 'viewpoint 2')."""
    return FACTORY.get(ALIASES.get(dataset_name, dataset_name), ReIDDataset).view_name(int(viewid))


def init_dataset(name: str, root: str, options: DatasetOptions = DatasetOptions()) -> ReIDDataset:
    """The dataset called `name` (DATASETS.NAMES) read from `root` (DATASETS.ROOT_DIR)."""
    name = ALIASES.get(name, name)
    if name not in FACTORY:
        raise UserError(f"DATASETS.NAMES '{name}' is unknown; known datasets: {', '.join(sorted(FACTORY))}")
    return FACTORY[name].from_options(root, options)


__all__ = ['FACTORY', 'ALIASES', 'camera_name', 'view_name', 'init_dataset', 'DatasetOptions', 'ReIDDataset', 'ImageDataset',
           'Protocol', 'MSSL', 'AGReID', 'AGReIDv2', 'CARGO', 'G2APSReID', 'LAGPeR', 'Market1501', 'CSVDataset', 'MSMT17',
           'DukeMTMCreID', 'OccludedDuke', 'VeRi', 'VehicleID']
