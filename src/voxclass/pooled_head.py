"""What voxclass's own models share after pooling a clip into one vector: layer norm, dropout,
a linear head and the loss, and their registration with transformers' Auto classes.

A model (`speech_embedding`, `keyword_head`) subclasses `PooledHeadModel` and gives `pooled`.
A model may pool into several independent members (`config.members`, `keyword_head`): the
pooled vector is their parts side by side, each member is normalized and classified on its
own and learns from its own loss, and the model's logits are the members' mean (an ensemble
over one encoder pass).
This file imports only torch and transformers: `save_pretrained` copies it beside the weights
with the model's own file, which imports it relatively.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForAudioClassification, PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel


@dataclass
class PooledHeadOutput(SequenceClassifierOutput):
    """`logits`: the model's (the members' mean). `member_logits`: [members, batch, labels],
    in training only and only with several members, for a loss computed outside the model
    (voxclass's class-weighted, multi-label and mixup losses) to train each member on its own."""

    member_logits: torch.FloatTensor | None = None


def mean_member_loss(loss_of_logits, logits: Tensor, member_logits: Tensor | None) -> Tensor:
    """`loss_of_logits(logits)`; with `member_logits` ([members, batch, labels]) its mean over
    each member's own logits instead, so that each member learns on its own rather than as a
    part of their mean. The model's own loss and voxclass's losses computed outside it
    (`train.each_member`) both go through here."""
    each = [logits] if member_logits is None else list(member_logits)
    return torch.stack([loss_of_logits(one) for one in each]).mean()


class PooledHeadModel(PreTrainedModel):
    """`pooled(inputs, attention_mask)` -> [batch, width] (the subclass's), then layer norm,
    dropout (`config.classifier_dropout`) and a linear layer to the labels. Single-label clips
    learn by cross-entropy, multi-label ones (`problem_type`) by one sigmoid per label."""

    def add_head(self, width: int) -> None:
        """The norm, dropout and linear layer over `width` pooled values (split evenly among
        `config.members`, each member's part normalized on its own)."""
        members = self.members
        self.norm = nn.LayerNorm(width) if members == 1 else nn.GroupNorm(members, width)
        self.dropout = nn.Dropout(self.config.classifier_dropout)
        self.classifier = nn.Linear(width, self.config.num_labels)

    @property
    def members(self) -> int:
        return getattr(self.config, "members", 1)

    def member_logits(self, features: Tensor) -> Tensor:
        """[members, batch, labels]: each member's linear layer (its columns of `classifier`,
        the shared bias) on its own part of the normalized pooled features."""
        weight = self.classifier.weight.view(self.config.num_labels, self.members, -1)
        parts = features.view(features.shape[0], self.members, -1)
        return torch.einsum("bmd,lmd->mbl", parts, weight) + self.classifier.bias

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.config.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    def pooled(self, inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def forward(
        self,
        input_features: Tensor | None = None,
        input_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs,
    ) -> PooledHeadOutput:
        """Whichever input the model's feature extractor gives (`input_features` or
        `input_values`), its `attention_mask`, and for training `labels`."""
        inputs = input_features if input_features is not None else input_values
        features = self.dropout(self.norm(self.pooled(inputs, attention_mask)))
        # the members' mean in one matmul (a single member: the plain linear layer)
        logits = self.classifier(features / self.members)
        members = self.member_logits(features) if self.training and self.members > 1 else None
        loss = None
        if labels is not None:
            loss = mean_member_loss(lambda one: self.loss(one, labels), logits, members)
        return PooledHeadOutput(loss=loss, logits=logits, member_logits=members)


def register_model(
    config_class: type[PretrainedConfig], model_class: type[PooledHeadModel]
) -> None:
    """Let transformers' Auto classes load the model type in this process (without
    `trust_remote_code`: the code is voxclass's own, not a folder's copy)."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForAudioClassification.register(config_class, model_class, exist_ok=True)
