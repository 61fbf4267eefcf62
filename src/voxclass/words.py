"""Word targets: a bag-of-words head on the frames the label classifier pools.

A model trained from scratch on a few phrasings per label learns those sentences, not the
words that carry the label, and misses the same request in other words. Given what clips say,
a head learns which words each clip says, a multi-label task over a vocabulary: one detector
per word scores every frame, and a clip's score for the word is its best frame (max pooling
over time, as in Palaz, Synnaeve and Collobert, 2016), so the encoder must find each word
wherever it falls, and the frames the label classifier averages carry words to key on. The
head exists only while training: the saved model is the stock classifier."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import torch
import torch.nn.functional as F

WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words_of(text: str) -> set[str]:
    """The distinct lower-case words of a transcript (`I'd` is one word)."""
    return set(WORD.findall(text.lower()))


def vocabulary(transcripts: Iterable[str], min_clips: int = 2) -> dict[str, int]:
    """Each word said in at least `min_clips` transcripts -> its target index, in sorted order
    (a word heard once teaches the head nothing it can carry to another clip)."""
    counts = Counter(word for text in transcripts for word in words_of(text))
    kept = sorted(word for word, n in counts.items() if n >= min_clips)
    return {word: i for i, word in enumerate(kept)}


def targets(transcripts: Iterable[str | None], vocab: dict[str, int]) -> torch.Tensor:
    """Multi-hot rows (clips x vocabulary); a clip without a transcript (None, "") is a row of
    -1, not counted by `WordHead.loss`."""
    rows = []
    for text in transcripts:
        row = torch.zeros(len(vocab)) if text else torch.full((len(vocab),), -1.0)
        for word in words_of(text or ""):
            if word in vocab:
                row[vocab[word]] = 1.0
        rows.append(row)
    return torch.stack(rows) if rows else torch.zeros(0, len(vocab))


class WordHead(torch.nn.Module):
    """A word detector per vocabulary word on frames of width `width`."""

    def __init__(self, width: int, words: int):
        super().__init__()
        self.out = torch.nn.Linear(width, words)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each word's logit for each clip: its best frame's (clips x frames x width in;
        `mask`, clips x frames, is True on real frames, False on padding)."""
        logits = self.out(frames)
        if mask is not None:
            logits = logits.masked_fill(~mask.bool()[..., None], torch.finfo(logits.dtype).min)
        return logits.max(dim=1).values

    def loss(
        self, frames: torch.Tensor, hot: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Binary cross-entropy of each word's logit, mean over the clips with a transcript
        (rows of -1 are not counted) and the vocabulary."""
        known = hot[:, 0] >= 0 if hot.shape[1] else hot.new_zeros(len(hot), dtype=torch.bool)
        if not known.any():
            return frames.sum() * 0.0
        mask = mask[known] if mask is not None else None
        return F.binary_cross_entropy_with_logits(self(frames[known], mask), hot[known])
