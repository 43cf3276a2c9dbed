"""Image transforms for training and testing, as the published MSP / CLIP-ReID code builds them.

Train: bicubic resize, horizontal flip, pad and random crop, to tensor, normalise, then timm's
random erasing (per-pixel normal noise, area 2 %-1/3, one box). Test (also stage 1's feature pass):
a plain `Resize` of the PIL image, whose default interpolation is bilinear, to tensor, normalise.
Both resizes work on the uint8 PIL image, so Pillow does the resampling, as in the published code.
"""
from typing import Sequence

import torchvision.transforms as T
from timm.data.random_erasing import RandomErasing

# The published recipe normalises with 0.5 / 0.5 (configs/person/vit_clipreid.yml), not CLIP's statistics.
PUBLISHED_MEAN = (0.5, 0.5, 0.5)
PUBLISHED_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_INTERPOLATION = T.InterpolationMode.BICUBIC
TEST_INTERPOLATION = T.InterpolationMode.BILINEAR


def _size(value: Sequence[int], name: str) -> list:
    size = [int(v) for v in value]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} must be [height, width] with positive values, got {list(value)}")
    return size


def _probability(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def build_transforms(size_train: Sequence[int], size_test: Sequence[int], *, is_train: bool,
                     prob_flip: float = 0.5, padding: int = 10, re_prob: float = 0.5,
                     mean: Sequence[float] = PUBLISHED_MEAN, std: Sequence[float] = PUBLISHED_STD) -> T.Compose:
    """PIL image -> normalised float tensor [3, H, W] (module docstring: what each does)."""
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    normalize = T.Normalize(mean=list(mean), std=list(std))
    if not is_train:
        return T.Compose([
            T.Resize(_size(size_test, "size_test"), interpolation=TEST_INTERPOLATION),
            T.ToTensor(),
            normalize,
        ])
    size = _size(size_train, "size_train")
    return T.Compose([
        T.Resize(size, interpolation=TRAIN_INTERPOLATION),
        T.RandomHorizontalFlip(p=_probability(prob_flip, "prob_flip")),
        T.Pad(padding),
        T.RandomCrop(size),
        T.ToTensor(),
        normalize,
        # On the CPU inside the loader workers, like the published code's device='cpu'.
        RandomErasing(probability=_probability(re_prob, "re_prob"), mode='pixel', max_count=1, device='cpu'),
    ])
