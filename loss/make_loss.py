"""Loss combinations used by the training stages."""
from typing import Dict, Sequence, Tuple

import torch
from torch import nn


def stage2_loss(cls_scores: Sequence[torch.Tensor], feats: Sequence[torch.Tensor], targets: torch.Tensor,
                id_loss: nn.Module, triplet: nn.Module, id_weight: float,
                triplet_weight: float) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Weighted sum of the identity loss over every classifier output and the triplet loss over
    every feature. Returns ``(total, {"id": ..., "triplet": ...})``; the parts are unweighted."""
    if not cls_scores and not feats:
        raise ValueError("stage2_loss needs at least one classifier score or feature")
    parts: Dict[str, torch.Tensor] = {}
    anchor = cls_scores[0] if cls_scores else feats[0]
    zero = anchor.sum() * 0.0
    parts["id"] = sum((id_loss(score, targets) for score in cls_scores), zero)
    parts["triplet"] = sum((triplet(feat, targets) for feat in feats), zero)
    total = id_weight * parts["id"] + triplet_weight * parts["triplet"]
    return total, parts


def image_to_text_loss(image_proj: torch.Tensor, text_features: torch.Tensor, targets: torch.Tensor,
                       image_mask: torch.Tensor, id_loss: nn.Module) -> torch.Tensor:
    """Classify the selected images against the per-identity text features.

    ``image_proj`` [B,E], ``text_features`` [C,E], ``targets`` [B], ``image_mask`` [B] bool.
    Logits are ``image_proj[mask] @ text_features.T``; ``id_loss`` (label-smoothed CE) against
    ``targets[mask]``. A mask that selects no image gives a zero connected to the graph.
    """
    image_mask = image_mask.to(torch.bool)
    if not bool(image_mask.any()):
        return image_proj.sum() * 0.0 + text_features.sum() * 0.0
    logits = image_proj[image_mask] @ text_features.t()
    return id_loss(logits, targets[image_mask])
