"""Label-smoothed cross-entropy for identity classification."""
import torch
from torch import nn
import torch.nn.functional as F


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against smoothed one-hot targets, averaged over the batch.

    The target distribution is ``(1 - epsilon) * one_hot + epsilon / num_classes``.
    An empty batch gives a zero that is still connected to the graph (not NaN).
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.num_classes = num_classes
        self.epsilon = epsilon

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of each row [B]."""
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, expected {self.num_classes}")
        log_probs = F.log_softmax(logits, dim=1)
        # scatter, not F.one_hot: one_hot reads the labels' range on the host (a device sync)
        smoothed = torch.full_like(log_probs, self.epsilon / self.num_classes)
        smoothed.scatter_(1, targets.long().unsqueeze(1), 1.0 - self.epsilon + self.epsilon / self.num_classes)
        return -(smoothed * log_probs).sum(dim=1)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        return self.per_sample(logits, targets).mean()
