"""DATALOADER.SKIP_BAD_IMAGES: find the unreadable images up front and drop them from the dataset.

Dropping them before any loader is built keeps every ordered loader (stage-1 features, evaluation)
aligned with its labels, and gives one count for the whole run, whatever the number of workers.
"""
from torch.utils.data import DataLoader, Dataset

from datasets.bases import ReIDDataset, read_image
from utils.errors import UserError


class _Probe(Dataset):
    """Decodes each image fully; yields '' when it reads, else the reason it does not."""

    def __init__(self, paths: list):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str:
        try:
            read_image(self.paths[index])
        except UserError as err:
            return str(err)
        return ''


def find_unreadable_images(paths: list, num_workers: int = 0) -> dict:
    """{path: reason} for each path that cannot be decoded, in `paths` order."""
    loader = DataLoader(_Probe(paths), batch_size=32, num_workers=num_workers, collate_fn=list)
    reasons = [reason for batch in loader for reason in batch]
    return {path: reason for path, reason in zip(paths, reasons) if reason}


def skip_unreadable_images(dataset: ReIDDataset, num_workers: int, logger) -> int:
    """Drop the dataset's unreadable images, logging each and the count; returns the count."""
    paths = dataset.image_paths()
    bad = find_unreadable_images(paths, num_workers)
    for reason in bad.values():
        logger.warning(f"skipping a bad image: {reason}")
    if bad:
        dataset.drop_images(set(bad))
    logger.info(f"DATALOADER.SKIP_BAD_IMAGES: {len(bad)} of {len(paths)} images are unreadable and skipped")
    return len(bad)
