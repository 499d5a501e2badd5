"""A short supervised training loop: training a factory model from scratch (`model.train`)
and QAT fine-tuning share it."""

from __future__ import annotations

import torch
from torch import nn

from ..progress import NULL_PROGRESS, Progress
from .data import Dataset


def fit(model: nn.Module, data: Dataset, epochs: int, lr: float, batch_size: int, seed: int,
        progress: Progress = NULL_PROGRESS, label: str = "train") -> list[float]:
    """Adam on cross-entropy over seeded shuffles of `data`; returns the mean loss of each epoch.

    The caller puts the model in training mode (exported QAT graphs need their own helper)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    n = len(data)
    steps = (n + batch_size - 1) // batch_size
    losses = []
    with progress.task(label, total=epochs * steps) as advance:
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=g)
            total = 0.0
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                if idx.numel() < 2 and n > 1:  # a batch of one specialises some exported graphs
                    continue
                logits = model(*(x[idx] for x in data.inputs))
                loss = nn.functional.cross_entropy(logits, data.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().item() * idx.numel()
                advance(1)
            losses.append(total / n)
            advance(0, note=f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    return losses
