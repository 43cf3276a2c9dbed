"""Datasets by name: MSSL, AG-ReID v1 and v2, CARGO, G2APS-ReID, LAGPeR, Market-1501 and CSV files."""
from utils.errors import UserError

from .agreid import AGReID
from .agreid_v2 import AGReIDv2
from .bases import ImageDataset, ReIDDataset
from .cargo import CARGO
from .csv_dataset import CSVDataset
from .g2aps_reid import G2APSReID
from .lagper import LAGPeR
from .market1501 import Market1501
from .mssl import MSSL
from .protocols import Protocol

FACTORY: dict[str, type[ReIDDataset]] = {
    'mssl': MSSL, 'agreid': AGReID, 'market1501': Market1501, 'agreid_v2': AGReIDv2, 'cargo': CARGO,
    'g2aps_reid': G2APSReID, 'lagper': LAGPeR, 'csv': CSVDataset,
}


def camera_name(dataset_name: str, camid: int) -> str:
    """Camera `camid` of dataset `dataset_name` (DATASETS.NAMES) as its file names write it ('c05')."""
    return FACTORY.get(dataset_name, ReIDDataset).camera_name(int(camid))


def init_dataset(name: str, root: str) -> ReIDDataset:
    """The dataset called `name` (DATASETS.NAMES) read from `root` (DATASETS.ROOT_DIR)."""
    if name not in FACTORY:
        raise UserError(f"DATASETS.NAMES '{name}' is unknown; known datasets: {', '.join(sorted(FACTORY))}")
    return FACTORY[name](root)


__all__ = ['FACTORY', 'camera_name', 'init_dataset', 'ReIDDataset', 'ImageDataset', 'Protocol', 'MSSL', 'AGReID', 'AGReIDv2',
           'CARGO', 'G2APSReID', 'LAGPeR', 'Market1501', 'CSVDataset']
