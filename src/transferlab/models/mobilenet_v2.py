"""MobileNetV2 built from its paper's table, trained from scratch as in the study.

Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018 (https://arxiv.org/abs/1801.04381), Table 2, reproduced in the study's Figure 4: a 3x3
stem convolution with 32 filters and stride 2, seven rows of inverted-residual bottlenecks, a 1x1
convolution to 1280 channels, global average pooling and the study's head (Dropout 0.3, then a
1x1 convolution to k classes).
"""

from __future__ import annotations

from functools import partial

from torch import nn

from transferlab.errors import TransferlabError
from transferlab.models.base import PreprocessConfig, TransferModel
from transferlab.models.heads import check_head, linear_head
from transferlab.models.registry import register_model

# The paper's Table 2, one row per bottleneck sequence: expansion factor t, output channels c,
# repeats n, stride s of the first repeat.
BOTTLENECK_ROWS: tuple[tuple[int, int, int, int], ...] = (
    # t,   c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
HEAD_DROPOUT = 0.3  # the study's dropout before the 1x1 classifier convolution


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never below 90% of `value` (the paper's code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu6(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Convolution (no bias), BatchNorm, ReLU6."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Bottleneck: 1x1 expansion by t, 3x3 depthwise with stride s, linear 1x1 projection.

    The residual connection is used when the block keeps resolution and channel count.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_ch, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),  # linear bottleneck: no activation after the projection
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """Stem, the bottleneck rows (one `nn.Sequential` per table row), the 1x1 head convolution.

    Args:
        width_mult: multiplies every channel count (rounded to multiples of 8); the last
            convolution never shrinks below 1280, as in the paper.
        cifar_stem: stride 1 in the stem and in the first strided row, so 32 x 32 inputs end at
            4 x 4 instead of 1 x 1 (the usual CIFAR variant).
    """

    def __init__(self, width_mult: float = 1.0, cifar_stem: bool = False) -> None:
        super().__init__()
        if width_mult <= 0:
            raise TransferlabError(f"width_mult must be > 0, got {width_mult}")
        in_ch = make_divisible(STEM_CHANNELS * width_mult)
        self.stem = conv_bn_relu6(3, in_ch, 3, stride=1 if cifar_stem else 2)
        rows: list[nn.Module] = []
        first_strided_row = True
        for t, c, n, s in BOTTLENECK_ROWS:
            if cifar_stem and s == 2 and first_strided_row:
                s, first_strided_row = 1, False
            out_ch = make_divisible(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
            rows.append(nn.Sequential(*blocks))
        self.rows = nn.Sequential(*rows)
        self.num_features = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        self.conv_head = conv_bn_relu6(in_ch, self.num_features, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # The initialisation of the reference implementation (torchvision mobilenetv2.py).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_names(self) -> list[str]:
        """Stem, each table row, head convolution: the units freezing and caching work on."""
        return ["stem", *(f"rows.{i}" for i in range(len(self.rows))), "conv_head"]

    def forward(self, x):
        return self.conv_head(self.rows(self.stem(x)))


@register_model(
    "mobilenet_v2_paper",
    summary="MobileNetV2 from the paper's table, trained from scratch; kwargs width_mult, cifar_stem",
)
def mobilenet_v2_paper(
    num_classes: int = 100,
    head: str = "study",
    pretrained: bool = False,
    width_mult: float = 1.0,
    cifar_stem: bool = False,
    dropout: float = HEAD_DROPOUT,
) -> TransferModel:
    """Build MobileNetV2 from the paper's table with the study's head.

    Args:
        num_classes: number of output classes.
        head: "study" (Dropout then a 1x1 conv, as the study) or "linear" (the same head: a 1x1
            convolution on the pooled map is a Linear layer).
        pretrained: must be False: this is the from-scratch network.
        width_mult: channel multiplier (1.0 is the paper's network).
        cifar_stem: stride 1 in the stem and first strided row, for 32 x 32 inputs.
        dropout: dropout rate before the classifier.
    """
    check_head(head)
    backbone = MobileNetV2Backbone(width_mult=width_mult, cifar_stem=cifar_stem)
    size = (32, 32) if cifar_stem else (224, 224)
    return TransferModel(
        backbone=backbone,
        stage_names=backbone.stage_names(),
        num_features=backbone.num_features,
        make_head=partial(linear_head, backbone.num_features, dropout=dropout),
        num_classes=num_classes,
        pretrained_cfg=PreprocessConfig(input_size=size),
        default_input_size=size,
        model_name="mobilenet_v2_paper",
        model_kwargs={
            "head": head,
            "width_mult": width_mult,
            "cifar_stem": cifar_stem,
            "dropout": dropout,
        },
    )
