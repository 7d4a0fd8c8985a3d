"""Class labels as the networks take them: integer ids checked against K, float one-hot rows
(an all-zero row is the unconditional model), label dropout for classifier-free guidance, and a
training set's labels (`ClassLabels`). Used by training and sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def check_labels(ids: Tensor, num_classes: int) -> None:
    """A one-line error for integer class labels outside 0..K-1."""
    from benchmark.errors import DatasetError

    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise DatasetError(f"class labels span {int(ids.min())}..{int(ids.max())}, outside 0..{num_classes - 1}",
                           "check the dataset's labels or its number of classes")


def one_hot(labels, num_classes: int) -> Tensor:
    """Integer class labels [N] -> float one-hot [N, K] (checked against K)."""
    y = torch.as_tensor(labels).long()
    check_labels(y, num_classes)
    return nn.functional.one_hot(y, num_classes).float()


def drop_labels(labels: Tensor, p: float, gen: torch.Generator) -> Tensor:
    """Label dropout for classifier-free guidance: each row zeroed (= unconditional) with prob. p
    (CFG Alg. 1, p_uncond; EDM's label_dropout)."""
    if p <= 0:
        return labels
    keep = torch.rand(len(labels), generator=gen) >= p
    return labels * keep[:, None].to(labels)


@dataclass
class ClassLabels:
    """A training set's class labels: integer ids [N] (compact; one-hot per batch), the number of
    classes K and the label-dropout probability that trains the unconditional model for CFG."""

    ids: Tensor
    num_classes: int
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.ids = torch.as_tensor(self.ids).long()
        check_labels(self.ids, self.num_classes)

    def batch(self, idx: Tensor, gen: torch.Generator, device: torch.device) -> Tensor:
        """One-hot labels of the examples `idx`, each row dropped with probability `dropout`."""
        y = nn.functional.one_hot(self.ids[idx], self.num_classes).float()
        return drop_labels(y, self.dropout, gen).to(device)
