"""Small classifiers in plain torch (torchvision is not needed), usable as `model.factory`.

`llmquant.classic.zoo:digits_cnn` fits scikit-learn's 8x8 digits; `llmquant.classic.zoo:lenet`
is LeNet-5 for 28x28 MNIST. Both take [N, 1, H, W] floats and return logits.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """conv(16) → pool → conv(32) → pool → fc(hidden) → fc(classes), for 8x8 inputs."""

    def __init__(self, num_classes: int = 10, hidden: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class LeNet(nn.Module):
    """LeNet-5 (ReLU, max pooling) for 28x28 inputs."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


def digits_cnn(num_classes: int = 10, hidden: int = 64) -> DigitsCNN:
    return DigitsCNN(num_classes, hidden)


def lenet(num_classes: int = 10) -> LeNet:
    return LeNet(num_classes)
