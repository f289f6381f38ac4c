"""A small CNN for scikit-learn's 8x8 digits: real enough to train, quantize and measure in seconds."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 32, hidden: int = 256, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels * 2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * 2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsMobileNet(nn.Module):
    """A MobileNet-style student: a 3x3 stem, then depthwise-separable blocks (3x3 depthwise + 1x1 pointwise,
    each with batch norm and ReLU), global average pooling and one linear layer. A few thousand parameters."""

    def __init__(self, channels: int = 16, num_classes: int = 10):
        super().__init__()

        def separable(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(),
                    nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            *separable(channels, channels * 2),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            *separable(channels * 2, channels * 4),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * 4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
