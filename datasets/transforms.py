"""Image transforms for training and testing (torchvision v1 API, PIL input)."""
from typing import Sequence

import torchvision.transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
                     mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> T.Compose:
    """PIL image -> normalised float tensor [3, H, W].

    Train: bicubic resize to ``size_train`` ([H, W]), horizontal flip, pad by ``padding`` and random
    crop back to ``size_train``, to tensor, normalise, random erasing. Test: bicubic resize to
    ``size_test``, to tensor, normalise.

    Random erasing runs after normalisation and fills with 0, i.e. with the dataset mean colour;
    area 2-40 % of the image, aspect ratio 0.3-3.3.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    normalize = T.Normalize(mean=list(mean), std=list(std))
    if not is_train:
        return T.Compose([
            T.Resize(_size(size_test, "size_test"), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            normalize,
        ])
    size = _size(size_train, "size_train")
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=_probability(prob_flip, "prob_flip")),
        T.Pad(padding),
        T.RandomCrop(size),
        T.ToTensor(),
        normalize,
        T.RandomErasing(p=_probability(re_prob, "re_prob"), scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0),
    ])
