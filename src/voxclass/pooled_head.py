"""What voxclass's own models share after pooling a clip into one vector: layer norm, dropout,
a linear head and the loss, and their registration with transformers' Auto classes.

A model (`speech_embedding`, `keyword_head`) subclasses `PooledHeadModel` and gives `pooled`.
This file imports only torch and transformers: `save_pretrained` copies it beside the weights
with the model's own file, which imports it relatively.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForAudioClassification, PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel


class PooledHeadModel(PreTrainedModel):
    """`pooled(inputs, attention_mask)` -> [batch, width] (the subclass's), then layer norm,
    dropout (`config.classifier_dropout`) and a linear layer to the labels. Single-label clips
    learn by cross-entropy, multi-label ones (`problem_type`) by one sigmoid per label."""

    def add_head(self, width: int) -> None:
        """The norm, dropout and linear layer over `width` pooled values."""
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(self.config.classifier_dropout)
        self.classifier = nn.Linear(width, self.config.num_labels)

    def pooled(self, inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def forward(
        self,
        input_features: Tensor | None = None,
        input_values: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """Whichever input the model's feature extractor gives (`input_features` or
        `input_values`), its `attention_mask`, and for training `labels`."""
        inputs = input_features if input_features is not None else input_values
        logits = self.classifier(self.dropout(self.norm(self.pooled(inputs, attention_mask))))
        loss = None
        if labels is not None:
            if self.config.problem_type == "multi_label_classification":
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def register_model(
    config_class: type[PretrainedConfig], model_class: type[PooledHeadModel]
) -> None:
    """Let transformers' Auto classes load the model type in this process (without
    `trust_remote_code`: the code is voxclass's own, not a folder's copy)."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForAudioClassification.register(config_class, model_class, exist_ok=True)
