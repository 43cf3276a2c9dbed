"""Datasets: MSSL, AG-ReID v1 and Market-1501, by name."""
from utils.errors import UserError

from .agreid import AGReID
from .bases import ImageDataset, ReIDDataset
from .market1501 import Market1501
from .mssl import MSSL

FACTORY: dict[str, type[ReIDDataset]] = {'mssl': MSSL, 'agreid': AGReID, 'market1501': Market1501}


def init_dataset(name: str, root: str) -> ReIDDataset:
    """The dataset called `name` (DATASETS.NAMES) read from `root` (DATASETS.ROOT_DIR)."""
    if name not in FACTORY:
        raise UserError(f"DATASETS.NAMES '{name}' is unknown; known datasets: {', '.join(sorted(FACTORY))}")
    return FACTORY[name](root)


__all__ = ['FACTORY', 'init_dataset', 'ReIDDataset', 'ImageDataset', 'MSSL', 'AGReID', 'Market1501']
