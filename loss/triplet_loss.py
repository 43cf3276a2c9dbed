"""Batch-hard triplet loss."""
from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F


def euclidean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances between rows of x [N,D] and y [M,D] -> [N,M]."""
    squared = (x * x).sum(dim=1, keepdim=True) + (y * y).sum(dim=1).unsqueeze(0) - 2.0 * (x @ y.t())
    # clamp before sqrt: rounding can make squared distances slightly negative, and sqrt(0) has an infinite gradient
    return squared.clamp(min=1e-12).sqrt()


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al.): for every anchor, the farthest positive and the
    nearest negative in the batch.

    ``margin`` set -> ``max(0, d_ap - d_an + margin)`` (MarginRankingLoss); ``margin=None`` ->
    soft margin ``log(1 + exp(d_ap - d_an))``. Anchors without another sample of the same identity
    or without any negative are left out; if none is left the loss is a zero connected to the graph.
    """

    def __init__(self, margin: Optional[float] = 0.3, normalize_feature: bool = False):
        super().__init__()
        self.margin = margin
        self.normalize_feature = normalize_feature

    def hardest_pairs(self, features: torch.Tensor, targets: torch.Tensor):
        """Return (dist_ap, dist_an, valid) for each anchor row; ``valid`` marks rows with a positive
        other than itself and at least one negative."""
        if features.element_size() < 4:
            # the expanded distance formula cancels badly in half precision
            features = features.float()
        if self.normalize_feature:
            features = F.normalize(features, dim=1)
        dist = euclidean_distance(features, features)
        n = dist.shape[0]
        same = targets.view(n, 1) == targets.view(1, n)
        not_self = ~torch.eye(n, dtype=torch.bool, device=dist.device)
        positive = same & not_self
        negative = ~same
        valid = positive.any(dim=1) & negative.any(dim=1)
        # masked entries never win: positives look for the max, negatives for the min
        dist_ap = dist.masked_fill(~positive, float("-inf")).max(dim=1).values
        dist_an = dist.masked_fill(~negative, float("inf")).min(dim=1).values
        return dist_ap, dist_an, valid

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if features.shape[0] == 0:
            return features.sum() * 0.0
        dist_ap, dist_an, valid = self.hardest_pairs(features, targets)
        # The mean over valid anchors by masked arithmetic: no host sync (as boolean indexing would be).
        # An invalid anchor has dist_ap = -inf or dist_an = inf: its term is 0 with a zero gradient.
        if self.margin is None:
            per_anchor = F.softplus(dist_ap - dist_an)  # SoftMarginLoss(dist_an - dist_ap, 1)
        else:
            per_anchor = F.relu(dist_ap - dist_an + self.margin)  # MarginRankingLoss(dist_an, dist_ap, 1)
        per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
        return per_anchor.sum() / valid.sum().clamp(min=1)
