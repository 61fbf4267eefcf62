"""Built-in small models that train from scratch on a CPU.

Each preset is a stock transformers architecture, so a trained directory loads with plain
`AutoModelForAudioClassification` / `pipeline("audio-classification")`, no voxclass needed.
The default `tiny` is a small Wav2Vec2-BERT (conformer on 80-bin log-mel features): in quick
trials log-mel + convolution learned far faster from scratch than raw-waveform wav2vec2.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import (
    PretrainedConfig,
    SeamlessM4TFeatureExtractor,
    Wav2Vec2BertConfig,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
)
from transformers.feature_extraction_utils import FeatureExtractionMixin

ModelSpec = tuple[PretrainedConfig, FeatureExtractionMixin]


def _w2v_bert(hidden: int, layers: int, heads: int) -> ModelSpec:
    config = Wav2Vec2BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        output_hidden_size=hidden,
        classifier_proj_size=hidden,
        conv_depthwise_kernel_size=15,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        feat_proj_dropout=0.1,
        layerdrop=0.0,
        mask_time_prob=0.05,  # SpecAugment time masks during training
        mask_time_length=5,
        mask_feature_prob=0.05,  # and frequency masks
        mask_feature_length=8,
    )
    return config, SeamlessM4TFeatureExtractor()


def _w2v2(hidden: int, layers: int, heads: int) -> ModelSpec:
    """Raw-waveform wav2vec2 like facebook/wav2vec2-base (group-norm, no attention mask)."""
    config = Wav2Vec2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        conv_dim=(64, 64, 64, 64, 64, 64, 64),
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=4,
        classifier_proj_size=hidden,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        mask_time_prob=0.05,
        layerdrop=0.0,
    )
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=False,
    )
    return config, extractor


PRESETS: dict[str, Callable[[], ModelSpec]] = {
    "tiny": lambda: _w2v_bert(hidden=144, layers=4, heads=4),
    "small": lambda: _w2v_bert(hidden=256, layers=6, heads=4),
    "tiny-wav2vec2": lambda: _w2v2(hidden=144, layers=4, heads=4),
}


def preset_config(name: str) -> ModelSpec:
    """Config (without labels) and feature extractor of a built-in preset."""
    return PRESETS[name]()
