"""Loss combinations used by the training stages."""
from typing import Dict, Sequence, Tuple

import torch
from torch import nn

from loss.softmax_loss import CrossEntropyLabelSmooth
from loss.supcontrast import SupConLoss
from loss.triplet_loss import TripletLoss
from utils.vocabulary import VIEW_IDS


def prompt_loss(image_feats: torch.Tensor, text_feats: torch.Tensor,
                labels: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The stage-1 objective (CLIP-ReID's): supervised contrastive loss from the batch's images to their
    identities' text features ('i2t') plus from the text features to the images ('t2i').
    Returns ``(i2t + t2i, {"i2t": ..., "t2i": ...})``."""
    supcon = SupConLoss()
    parts = {"i2t": supcon(image_feats, text_feats, labels, labels),
             "t2i": supcon(text_feats, image_feats, labels, labels)}
    return parts["i2t"] + parts["t2i"], parts


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
                       image_mask: torch.Tensor, id_loss: CrossEntropyLabelSmooth) -> torch.Tensor:
    """Classify the selected images against the per-identity text features.

    ``image_proj`` [B,E], ``text_features`` [C,E], ``targets`` [B], ``image_mask`` [B] bool.
    The mean of ``id_loss`` (label-smoothed CE) of the logits ``image_proj @ text_features.T`` over the
    selected images, by masked arithmetic (boolean indexing would make the host wait for the device).
    A mask that selects no image gives a zero connected to the graph.
    """
    weights = image_mask.to(image_proj.dtype)
    per_image = id_loss.per_sample(image_proj @ text_features.t(), targets)
    return (per_image * weights).sum() / weights.sum().clamp(min=1)


def image_view_mask(view_ids: torch.Tensor, image_view: str) -> torch.Tensor:
    """Which images of a batch an image-to-text term uses: 'all', 'sky' (view 1) or 'ground' (view 0)."""
    if image_view == 'all':
        return torch.ones_like(view_ids, dtype=torch.bool)
    return view_ids == VIEW_IDS[image_view]


def msp_stage2_loss(out: Dict[str, object], targets: torch.Tensor, view_ids: torch.Tensor,
                    i2t_terms: Sequence[Tuple[torch.Tensor, str, float]], id_loss: nn.Module,
                    triplet: nn.Module, id_weight: float,
                    triplet_weight: float) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The whole stage-2 objective for one batch of model outputs (`cls_scores`, `feats`, `proj`):
    `stage2_loss` plus, for each (text features, image view, weight) term, weight times
    `image_to_text_loss` of that view's images. Parts: 'id', 'triplet', 'i2t_<k>' (unweighted)."""
    cls_scores = [score.float() for score in out['cls_scores']]
    feats = [feat.float() for feat in out['feats']]
    total, parts = stage2_loss(cls_scores, feats, targets, id_loss, triplet, id_weight, triplet_weight)
    proj = out['proj'].float()
    for k, (text_features, image_view, weight) in enumerate(i2t_terms):
        term = image_to_text_loss(proj, text_features, targets, image_view_mask(view_ids, image_view), id_loss)
        parts[f'i2t_{k}'] = term
        total = total + weight * term
    return total, parts


class Stage2Criterion(nn.Module):
    """The stage-2 objective as a module: ``criterion(out, pids, view_ids) -> (total, parts)``.

    ID (label-smoothed CE of both classifiers) x ``id_weight`` + batch-hard triplet on the three
    features x ``triplet_weight`` + for each image-to-text term (text features [C, E], image view,
    weight) weight x CE of that view's projected image features against the text features. Parts
    (unweighted): 'id', 'triplet', 'i2t_<k>'. The text features are buffers, so `.to(device)` moves them.
    """

    def __init__(self, num_classes: int, id_weight: float, triplet_weight: float, margin: float,
                 label_smoothing: float, i2t_terms: Sequence[Tuple[torch.Tensor, str, float]] = ()):
        super().__init__()
        self.id_loss = CrossEntropyLabelSmooth(num_classes, epsilon=label_smoothing)
        self.triplet = TripletLoss(margin=margin)
        self.id_weight = id_weight
        self.triplet_weight = triplet_weight
        self.term_views, self.term_weights = [], []
        for k, (text_features, image_view, weight) in enumerate(i2t_terms):
            self.register_buffer(f'text_features_{k}', text_features.detach().float().clone())
            self.term_views.append(image_view)
            self.term_weights.append(float(weight))

    def terms(self) -> list:
        return [(getattr(self, f'text_features_{k}'), view, weight)
                for k, (view, weight) in enumerate(zip(self.term_views, self.term_weights))]

    def forward(self, out: Dict[str, object], targets: torch.Tensor,
                view_ids: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return msp_stage2_loss(out, targets, view_ids, self.terms(), self.id_loss, self.triplet,
                               self.id_weight, self.triplet_weight)
