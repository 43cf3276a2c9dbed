"""Data loaders built from the config: P x K training batches and plain ordered loaders."""
import os

import torch
from torch.utils.data import DataLoader

from datasets.bases import ImageDataset
from datasets.sampler import RandomIdentitySampler
from datasets.transforms import build_transforms
from utils.errors import UserError


def _transforms(cfg, is_train: bool):
    return build_transforms(
        size_train=cfg.INPUT.SIZE_TRAIN, size_test=cfg.INPUT.SIZE_TEST, prob_flip=cfg.INPUT.PROB,
        padding=cfg.INPUT.PADDING, re_prob=cfg.INPUT.RE_PROB, mean=cfg.INPUT.PIXEL_MEAN,
        std=cfg.INPUT.PIXEL_STD, is_train=is_train)


def _loader_kwargs(cfg, device: torch.device) -> dict:
    # More workers than CPUs only adds start-up time and memory (the recipe's 8 on a laptop).
    workers = min(cfg.DATALOADER.NUM_WORKERS, len(os.sched_getaffinity(0)))
    return dict(num_workers=workers, pin_memory=device.type == 'cuda', persistent_workers=workers > 0)


def make_train_loader(cfg, train_items: list, device: torch.device,
                      num_replicas: int = 1, rank: int = 0) -> DataLoader:
    """Augmented P x K batches of the stage-2 training set; call `loader.sampler.set_epoch(e)`."""
    batch, k = cfg.SOLVER.STAGE2.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE
    num_ids = len({pid for _, pid, _, _ in train_items})
    if num_ids < batch // k:
        raise UserError(f'SOLVER.STAGE2.IMS_PER_BATCH = {batch} with DATALOADER.NUM_INSTANCE = {k} needs '
                        f'{batch // k} identities per batch, but the training set has only {num_ids}')
    sampler = RandomIdentitySampler(train_items, batch, k, seed=cfg.SOLVER.SEED,
                                    num_replicas=num_replicas, rank=rank)
    image_set = ImageDataset(train_items, _transforms(cfg, is_train=True),
                             skip_bad_images=cfg.DATALOADER.SKIP_BAD_IMAGES)
    # Workers are started afresh each epoch, seeded from the loader's `generator`, which training sets
    # per epoch: a resumed epoch then gets exactly the augmentation of the uninterrupted run.
    kwargs = {**_loader_kwargs(cfg, device), 'persistent_workers': False}
    return DataLoader(image_set, batch_size=batch // num_replicas, sampler=sampler, drop_last=True, **kwargs)


def make_ordered_loader(cfg, items: list, device: torch.device) -> DataLoader:
    """Un-augmented images in the given order (feature extraction for stage 1 and testing)."""
    image_set = ImageDataset(items, _transforms(cfg, is_train=False),
                             skip_bad_images=cfg.DATALOADER.SKIP_BAD_IMAGES)
    return DataLoader(image_set, batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False,
                      **_loader_kwargs(cfg, device))

