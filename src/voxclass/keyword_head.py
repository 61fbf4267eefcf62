"""A word-spotting head on any transformers speech encoder (`voxclass train --head keywords`).

The stock audio-classification heads average the encoder's frames over the whole clip, then
apply one linear layer: what a clip says in which order is blurred into one mean, and a model
trained on a few phrasings per label learns those sentences. Here a convolution spanning a
word's worth of frames runs over the encoder's output first, so each of its detectors fires
on a stretch of speech wherever it occurs; the clip is then their mean and maximum over its own
frames. A label learns from the words that carry it, which new wording of the same request
shares.

    encoder frames -> Conv1d (kernel_frames wide, `detectors` out) -> ReLU -> mean and max
    over the clip's frames -> layer norm -> dropout -> linear

With `members` > 1 there are that many such detector banks and classifiers side by side, each
learning from its own loss; the logits are their mean. Trained on a few phrasings per label,
one bank's answers on new wording depend much on its random start; the mean of several
depends less, for one encoder pass.

The encoder is any `AutoModel` (its config is nested in this model's), fed exactly what its
own feature extractor gives. This file imports only torch, transformers and `pooled_head`:
`save_pretrained` copies both beside the weights, so a trained folder loads with stock
`pipeline("audio-classification", model=DIR, trust_remote_code=True)` without voxclass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from .pooled_head import PooledHeadModel, register_model

MODEL_TYPE = "voxclass-keyword-head"


class KeywordHeadConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(
        self,
        encoder: dict | None = None,
        kernel_frames: int = 9,
        detectors: int = 256,
        classifier_dropout: float = 0.2,
        members: int = 1,
        **kwargs,
    ) -> None:
        """`encoder`: the encoder's config as a dict (`config.to_dict()`, with its
        `model_type`). `kernel_frames`: the detectors' span in encoder frames (odd; 9 frames
        of a 25 frames/s encoder is 0.36 s, about a word). `detectors`: how many, per member.
        `classifier_dropout`: on the pooled features, while training. `members`: independent
        detector banks with their own classifiers, averaged (1 in a folder that does not say)."""
        if kernel_frames < 1 or kernel_frames % 2 == 0:
            raise ValueError(f"kernel_frames {kernel_frames}: give an odd number >= 1")
        if members < 1:
            raise ValueError(f"members {members}: give 1 or more")
        super().__init__(**kwargs)
        self.encoder = encoder or {}
        self.kernel_frames = kernel_frames
        self.detectors = detectors
        self.classifier_dropout = classifier_dropout
        self.members = members

    def encoder_config(self) -> PretrainedConfig:
        """The encoder's own config object, rebuilt from the `encoder` dict."""
        settings = dict(self.encoder)
        return AutoConfig.for_model(settings.pop("model_type"), **settings)


class KeywordHeadForAudioClassification(PooledHeadModel):
    """Encoder frames -> word-sized detectors -> their mean and maximum over the clip's own
    frames -> layer norm, dropout, linear (per member; the logits are the members' mean).
    Batch padding is masked out before the detectors and from both poolings, so a clip scores
    the same alone and in any batch."""

    config_class = KeywordHeadConfig
    base_model_prefix = "encoder"

    def __init__(self, config: KeywordHeadConfig):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder_config())
        self.main_input_name = self.encoder.main_input_name
        hidden = self.encoder.config.hidden_size
        # every member's detectors in one convolution: output channels never mix
        self.detectors = nn.Conv1d(
            hidden,
            config.members * config.detectors,
            config.kernel_frames,
            padding=config.kernel_frames // 2,
        )
        self.add_head(2 * config.members * config.detectors)
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        """Keep the pretrained encoder as it is; only the detectors and the head train
        (`--freeze-feature-encoder false` fine-tunes it too)."""
        for parameter in self.encoder.parameters():
            parameter.requires_grad = False

    def train(self, mode: bool = True) -> KeywordHeadForAudioClassification:
        """Train mode for the head; a frozen encoder stays in eval mode. Its dropout and
        SpecAugment would only add noise to features that never learn, at a large share of
        each step's time, and the head carries to unseen wording better without that noise
        (README, "The frozen encoder in eval mode")."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()
        return self

    def frame_mask(self, frames: int, attention_mask: Tensor | None, batch: int) -> Tensor:
        """[batch, frames] True on each clip's own encoder frames."""
        device = self.detectors.weight.device
        if attention_mask is None:
            return torch.ones(batch, frames, dtype=torch.bool, device=device)
        if attention_mask.shape[1] == frames:  # an encoder that keeps its input's frame rate
            return attention_mask.bool()
        # a convolutional front end (wav2vec2 family) maps samples to fewer frames
        return self.encoder._get_feature_vector_attention_mask(frames, attention_mask).bool()

    def pooled(self, inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Model inputs -> [batch, members * 2 * detectors]: per member, the mean and maximum
        of each of its detectors over the clip's own frames."""
        hidden = self.encoder(inputs, attention_mask=attention_mask).last_hidden_state
        mask = self.frame_mask(hidden.shape[1], attention_mask, hidden.shape[0])
        # zeros after the clip, as the convolution's own padding gives a clip alone
        hidden = hidden.masked_fill(~mask.unsqueeze(2), 0.0)
        fired = F.relu(self.detectors(hidden.transpose(1, 2))).transpose(1, 2)
        inside = mask.unsqueeze(2)
        mean = (fired * inside).sum(dim=1) / inside.sum(dim=1).clamp(min=1)
        peak = fired.masked_fill(~inside, 0.0).amax(dim=1)  # ReLU output: 0 is its floor
        each = (hidden.shape[0], self.config.members, self.config.detectors)
        return torch.cat([mean.view(each), peak.view(each)], dim=2).flatten(1)


KeywordHeadConfig.register_for_auto_class()
KeywordHeadForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")


def register() -> None:
    """Let transformers' Auto classes load this model type in this process."""
    register_model(KeywordHeadConfig, KeywordHeadForAudioClassification)
