"""Speaker-adversarial training: a speaker classifier on the features the label classifier
reads, joined to them through gradient reversal (Ganin & Lempitsky, 2015). The speaker head
learns to tell the training speakers apart; the reversed gradient teaches the encoder to make
that impossible, so the features keep what says the label and lose what says the voice. The
head exists only while training: the saved model is the stock classifier."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class GradientReversal(torch.autograd.Function):
    """Identity going forward; the gradient times -`weight` going back."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def ramp(progress: float) -> float:
    """The reversal's strength over training, 0 -> 1 (Ganin & Lempitsky's schedule): the
    speaker head first learns to find the speaker before the encoder is pushed to hide it."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


class SpeakerAdversary(torch.nn.Module):
    """A two-layer speaker classifier over pooled utterance features of width `width`."""

    def __init__(self, width: int, speakers: int):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, speakers)
        )

    def loss(self, pooled: torch.Tensor, speakers: torch.Tensor, weight: float) -> torch.Tensor:
        """Speaker cross-entropy through the reversal (speaker id -100: not counted)."""
        logits = self.layers(GradientReversal.apply(pooled, weight))
        if not (speakers != -100).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, speakers, ignore_index=-100)
