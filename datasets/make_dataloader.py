"""Data loaders: P x K training batches and plain ordered loaders."""
import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from datasets.bases import ImageDataset
from datasets.sampler import RandomIdentitySampler
from datasets.transforms import build_transforms
from utils.errors import UserError


@dataclass(frozen=True)
class LoaderSettings:
    """Preprocessing, augmentation and batching (processor/settings.py reads them from the config)."""
    size_train: tuple
    size_test: tuple
    prob_flip: float = 0.5
    padding: int = 10
    re_prob: float = 0.5
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    num_workers: int = 0
    train_batch: int = 64  # P x K images: SOLVER.STAGE2.IMS_PER_BATCH
    num_instance: int = 4  # K
    test_batch: int = 128
    seed: int = 1234
    skip_bad_images: bool = False


def transforms(settings: LoaderSettings, is_train: bool):
    return build_transforms(
        size_train=settings.size_train, size_test=settings.size_test, prob_flip=settings.prob_flip,
        padding=settings.padding, re_prob=settings.re_prob, mean=settings.mean, std=settings.std,
        is_train=is_train)


def _loader_kwargs(settings: LoaderSettings, device: torch.device) -> dict:
    # More workers than CPUs only adds start-up time and memory (the recipe's 8 on a laptop).
    workers = min(settings.num_workers, len(os.sched_getaffinity(0)))
    return dict(num_workers=workers, pin_memory=device.type == 'cuda', persistent_workers=workers > 0)


def make_train_loader(settings: LoaderSettings, train_items: list, device: torch.device,
                      num_replicas: int = 1, rank: int = 0) -> DataLoader:
    """Augmented P x K batches of the stage-2 training set; call `loader.sampler.set_epoch(e)`."""
    batch, k = settings.train_batch, settings.num_instance
    num_ids = len({pid for _, pid, _, _ in train_items})
    if num_ids < batch // k:
        raise UserError(f'SOLVER.STAGE2.IMS_PER_BATCH = {batch} with DATALOADER.NUM_INSTANCE = {k} needs '
                        f'{batch // k} identities per batch, but the training set has only {num_ids}')
    sampler = RandomIdentitySampler(train_items, batch, k, seed=settings.seed,
                                    num_replicas=num_replicas, rank=rank)
    image_set = ImageDataset(train_items, transforms(settings, is_train=True),
                             skip_bad_images=settings.skip_bad_images)
    # Workers are started afresh each epoch, seeded from the loader's `generator`, which training sets
    # per epoch: a resumed epoch then gets exactly the augmentation of the uninterrupted run.
    kwargs = {**_loader_kwargs(settings, device), 'persistent_workers': False}
    return DataLoader(image_set, batch_size=batch // num_replicas, sampler=sampler, drop_last=True, **kwargs)


def make_ordered_loader(settings: LoaderSettings, items: list, device: torch.device) -> DataLoader:
    """Un-augmented images in the given order (feature extraction for stage 1 and testing)."""
    image_set = ImageDataset(items, transforms(settings, is_train=False), skip_bad_images=settings.skip_bad_images)
    return DataLoader(image_set, batch_size=settings.test_batch, shuffle=False, **_loader_kwargs(settings, device))
