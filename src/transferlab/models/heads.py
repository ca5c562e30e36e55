"""Classifier heads: what sits on top of a backbone's feature map.

`study`: the head the 2018 study put on its pretrained InceptionV3 (its Figure 3): global average
pooling, Dense 1024 + ReLU, Dropout 0.3, Dense k. `linear`: global average pooling, optional
dropout, one Linear layer (timm's default classifier; holds a 1000-class ImageNet head).
"""

from __future__ import annotations

from torch import nn

from transferlab.choices import HEADS
from transferlab.errors import TransferlabError
from transferlab.models.base import ClassifierHead

STUDY_HIDDEN = 1024  # units of the study's hidden Dense layer
STUDY_DROPOUT = 0.3  # the study's dropout rate


def study_head(
    num_features: int, num_classes: int, dropout: float = STUDY_DROPOUT
) -> ClassifierHead:
    """The study's head: pool, Dense 1024 + ReLU, Dropout, Dense `num_classes`."""
    return ClassifierHead(
        nn.Sequential(
            nn.Linear(num_features, STUDY_HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(STUDY_HIDDEN, num_classes),
        )
    )


def linear_head(num_features: int, num_classes: int, dropout: float = 0.0) -> ClassifierHead:
    """Pool, optional dropout, one Linear layer.

    A 1x1 convolution applied to the pooled 1x1 map (the study's MobileNetV2 head) computes the
    same function with the same parameter count, so it is this head too.
    """
    linear = nn.Linear(num_features, num_classes)
    return ClassifierHead(nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear)


def final_linear_name(head: ClassifierHead) -> str:
    """Dotted name (inside the head) of the Linear layer that outputs the logits."""
    names = [name for name, m in head.named_modules() if isinstance(m, nn.Linear)]
    return names[-1]


def check_head(head: str) -> str:
    """Validate a head name."""
    if head not in HEADS:
        raise TransferlabError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    return head
