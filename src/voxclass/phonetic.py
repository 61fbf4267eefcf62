"""Phoneme targets while fine-tuning: keep an encoder made by `voxclass pretrain` phonetic.

Such an encoder ends in a CTC head over espeak-ng's phonemes. Fine-tuned on a few phrasings per
label, it is free to forget those sounds and learn the sentences instead. Given what each
training clip says (a transcript), `PhonemeHead` keeps the pretrained CTC head and its loss on
the clip's phonemes is added to the label loss: multi-task fine-tuning, so the features the
classifier reads stay tied to speech sounds. The head exists only while training: the saved
model is the stock classifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import ConfigError
from .model import PRETRAINED, pretrained_dir
from .pretrain import BLANK, UNKNOWN
from .synth import Espeak

ACCENT = "en-us"
"""The espeak-ng voice whose pronunciation gives the targets (a transcript has no accent)."""


class PhonemeHead(torch.nn.Module):
    """A linear CTC head over encoder frames, started from a pretrained one."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, dropout: float) -> None:
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def loss(
        self, hidden: torch.Tensor, frames: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """CTC loss of `hidden` (batch, time, width; `frames` valid per row) against `targets`
        (phoneme ids, -100 padded), per target phoneme and averaged over the rows that have a
        transcript (a row of only -100 has none and is not counted)."""
        lengths = (targets >= 0).sum(-1)
        said = lengths > 0
        if not said.any():
            return hidden.sum() * 0.0
        hidden, frames, targets, lengths = hidden[said], frames[said], targets[said], lengths[said]
        log_probs = F.log_softmax(self.linear(self.dropout(hidden)).float(), dim=-1)
        losses = F.ctc_loss(
            log_probs.transpose(0, 1),
            targets[targets >= 0],
            frames,
            lengths,
            blank=0,
            reduction="none",
            zero_infinity=True,  # a clip said too fast for its frames counts nothing
        )
        return (losses / lengths).mean()


def model_folder(name_or_path: str) -> Path:
    """The folder of a shipped encoder, a local one, or a Hub one's files in the local cache
    (`from_pretrained` has fetched them already)."""
    if name_or_path in PRETRAINED:
        return pretrained_dir(name_or_path)
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, allow_patterns=["vocab.json", "*.safetensors"]))


def load_head(name_or_path: str, dropout: float) -> tuple[PhonemeHead, dict[str, int]]:
    """The CTC head and phoneme vocabulary saved with a `voxclass pretrain` encoder; a
    ConfigError naming it when it has none."""
    from safetensors.torch import load_file

    try:
        model_dir = model_folder(name_or_path)
        vocab = json.loads((model_dir / "vocab.json").read_text())
        weights = load_file(model_dir / "model.safetensors")
        head = PhonemeHead(weights["lm_head.weight"], weights["lm_head.bias"], dropout)
    except Exception as err:  # safetensors' own error (a corrupt file) is not an OSError
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ConfigError(
            f"--phoneme-loss: {name_or_path} has no readable phoneme head ({first}); it needs an "
            "encoder made by `voxclass pretrain` (speech-tiny, or the --out folder of a run)"
        ) from None
    if vocab.get(BLANK) != 0 or len(vocab) != head.linear.out_features:
        raise ConfigError(
            f"--phoneme-loss: {model_dir}/vocab.json does not match its phoneme head; "
            "give the --out folder of a complete `voxclass pretrain` run"
        )
    return head, vocab


def phoneme_ids(texts: list[str], vocab: dict[str, int]) -> list[list[int]]:
    """Each text's phonemes as vocabulary ids (espeak-ng, `ACCENT`); a phoneme the vocabulary
    lacks is its unknown id, an empty text no phonemes."""
    espeak, unknown = Espeak(), vocab[UNKNOWN]
    said = {
        text: [vocab.get(p, unknown) for p in espeak.phonemes(text, ACCENT)]
        for text in set(texts)
        if text.strip()
    }
    return [said.get(text, []) for text in texts]
