"""Speaker-adversarial training: a speaker classifier on the features the label classifier
reads. The head learns to tell the training speakers apart; the encoder learns to leave it
guessing, its features pushed towards the head's uniform output (the confusion loss of Tzeng
et al., 2015), so they keep what says the label and lose what says the voice. Not gradient
reversal (Ganin & Lempitsky, 2015): reversed, the speaker cross-entropy has no upper bound and
the encoder inflates it without limit (the training loss reached 54,282 on FSDD, at chance).
The head exists only while training: the saved model is the stock classifier."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def ramp(progress: float) -> float:
    """The confusion loss's strength over training, 0 -> 1 (Ganin & Lempitsky's schedule): the
    speaker head first learns to find the speaker before the encoder is pushed to hide it."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


class SpeakerAdversary(torch.nn.Module):
    """A two-layer speaker classifier over pooled utterance features of width `width`."""

    def __init__(self, width: int, speakers: int):
        super().__init__()
        self.hidden = torch.nn.Linear(width, width)
        self.out = torch.nn.Linear(width, speakers)

    def forward(self, pooled: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Speaker logits; `frozen`: no gradient reaches the head's own weights."""

        def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
            if frozen:
                return F.linear(x, layer.weight.detach(), layer.bias.detach())
            return layer(x)

        return linear(self.out, F.relu(linear(self.hidden, pooled)))

    def loss(self, pooled: torch.Tensor, speakers: torch.Tensor, weight: float) -> torch.Tensor:
        """The head's speaker cross-entropy (it trains the head only) plus `weight` times the
        confusion loss, the cross-entropy of the head's output to uniform (it trains the
        features only). Speaker id -100: not counted."""
        known = speakers != -100
        if not known.any():
            return pooled.sum() * 0.0
        pooled, speakers = pooled[known], speakers[known]
        finding = F.cross_entropy(self(pooled.detach()), speakers)
        confusion = -F.log_softmax(self(pooled, frozen=True), dim=-1).mean()
        return finding + weight * confusion
