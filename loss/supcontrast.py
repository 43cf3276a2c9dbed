"""Supervised contrastive loss between two sets of features (CLIP-ReID stage 1)."""
import torch
from torch import nn
import torch.nn.functional as F


class SupConLoss(nn.Module):
    """Supervised contrastive loss from set ``a`` to set ``b``.

    Logits are the raw dot products ``a @ b.T`` (no normalisation, temperature 1: the caller
    decides on scaling). For every row of ``a`` every column of ``b`` with the same label is a
    positive; the loss is the negative mean log-likelihood of the positives, averaged over rows.
    Rows without any positive are left out; if none has one, the loss is a zero connected to the graph.

    Stage 1 uses it both ways: ``loss(img, txt, y, y) + loss(txt, img, y, y)``.
    """

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor,
                labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
        logits = features_a @ features_b.t()
        # subtracting the detached row max does not change log_softmax; it only keeps exp() finite
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        log_prob = F.log_softmax(logits, dim=1)
        mask = (labels_a.view(-1, 1) == labels_b.view(1, -1)).to(log_prob.dtype)
        positives = mask.sum(dim=1)
        has_positive = (positives > 0).to(log_prob.dtype)
        # the mean over rows with a positive by masked arithmetic: no host sync
        mean_log_prob_pos = (mask * log_prob).sum(dim=1) / positives.clamp(min=1)
        return -(mean_log_prob_pos * has_positive).sum() / has_positive.sum().clamp(min=1)
