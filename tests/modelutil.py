"""Helpers for tests on networks: BatchNorm layers that look trained (so surgery and folding are
tested on statistics and affine terms that matter, not on the identity of a fresh init)."""

import torch


def randomise_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Random running statistics and affine terms for every BatchNorm of `model` (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model
