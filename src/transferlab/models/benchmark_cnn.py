"""The study's benchmark CNN (its Figure 5): a 17,044-parameter network for k = 100 classes.

Three blocks of Conv 2x2 ('same' padding) + ReLU + MaxPool 2, with 16, 32 and 64 filters, then
global average pooling and Dense(k).
"""

from __future__ import annotations

from functools import partial

from torch import nn

from transferlab.models.base import PreprocessConfig, TransferModel
from transferlab.models.heads import check_head, linear_head
from transferlab.models.registry import register_model

FILTERS = (16, 32, 64)  # output channels of the three blocks


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    # Keras 'same' padding for a 2x2 kernel: 0 pixels before, 1 after (left/right, top/bottom).
    # The figure's order is Conv, ReLU, MaxPool; ReLU is monotonic, so max-pooling first computes
    # exactly the same function while the ReLU (and its backward pass, the slowest op of this
    # network on a CPU) touches a quarter of the values.
    return nn.Sequential(
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.Conv2d(in_channels, out_channels, kernel_size=2),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
    )


@register_model(
    "benchmark_cnn",
    summary="the study's benchmark CNN (Figure 5): 3 x [Conv 2x2, ReLU, MaxPool 2], GAP, Dense k",
)
def benchmark_cnn(
    num_classes: int = 100, head: str = "study", pretrained: bool = False
) -> TransferModel:
    """Build the benchmark CNN.

    Both heads are the study's own here (global average pooling then Dense k), so `head` only
    needs to be valid. It takes any input of at least 8 x 8 pixels; CIFAR's 32 x 32 natively.

    Args:
        num_classes: outputs of the final Dense layer.
        head: "study" or "linear" (identical for this network).
        pretrained: must be False: there are no pretrained weights.
    """
    check_head(head)
    stages = nn.Sequential()
    in_channels = 3
    for i, out_channels in enumerate(FILTERS):
        stages.add_module(f"block{i + 1}", _block(in_channels, out_channels))
        in_channels = out_channels
    return TransferModel(
        backbone=stages,
        stage_names=[f"block{i + 1}" for i in range(len(FILTERS))],
        num_features=in_channels,
        make_head=partial(linear_head, in_channels),
        num_classes=num_classes,
        pretrained_cfg=PreprocessConfig(input_size=(32, 32)),
        default_input_size=(32, 32),
        model_name="benchmark_cnn",
        model_kwargs={"head": head},
    )
