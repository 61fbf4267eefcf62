"""Built-in small models that train from scratch on a CPU.

Each preset is a stock transformers architecture, so a trained directory loads with plain
`AutoModelForAudioClassification` / `pipeline("audio-classification")`, no voxclass needed.
The default `tiny` is a small Wav2Vec2-BERT (conformer on log-mel features): in quick trials
log-mel + convolution learned far faster from scratch than raw-waveform wav2vec2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported when a preset is built, not with the names
    from transformers import PretrainedConfig
    from transformers.feature_extraction_utils import FeatureExtractionMixin

    ModelSpec = tuple[PretrainedConfig, FeatureExtractionMixin]


def _w2v_bert(
    hidden: int, layers: int, heads: int, rate: int, mel_bins: int, stride: int, ffn: int = 4
) -> ModelSpec:
    """A Wav2Vec2-BERT conformer on log-mel features. `stride` stacks frames (10 ms hop at
    16 kHz, 20 ms at 8 kHz): fewer, wider frames make a small model much cheaper per clip.
    `ffn` is the feed-forward width in multiples of `hidden` (the two feed-forward blocks of
    each conformer layer take most of its compute)."""
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig
    config = Wav2Vec2BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * ffn,
        output_hidden_size=hidden,
        classifier_proj_size=hidden,
        feature_projection_input_dim=mel_bins * stride,
        conv_depthwise_kernel_size=15,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        feat_proj_dropout=0.1,
        layerdrop=0.0,
        mask_time_prob=0.05,  # SpecAugment time masks during training
        mask_time_length=3,
        mask_feature_prob=0.05,  # and feature masks
        mask_feature_length=8,
    )
    extractor = SeamlessM4TFeatureExtractor(
        sampling_rate=rate, num_mel_bins=mel_bins, feature_size=mel_bins, stride=stride
    )
    return config, extractor


def _w2v2(hidden: int, layers: int, heads: int) -> ModelSpec:
    """Raw-waveform wav2vec2 like facebook/wav2vec2-base (group-norm, no attention mask)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor
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
    # Telephone-band speech (8 kHz like MInDS-14): 40 mel bins are wide enough to smooth out
    # pitch harmonics (speaker identity) yet resolve formants; 12.5 frames/s. Feed-forward 2x
    # wide: on the demo data it learned as well per epoch as 4x, for about a third less time.
    "tiny": lambda: _w2v_bert(
        hidden=128, layers=3, heads=4, rate=8000, mel_bins=40, stride=4, ffn=2
    ),
    # `tiny` at 25 frames/s (stride 2) for short clips: a spoken word lasts well under a
    # second, and at 12.5 frames/s it is a handful of frames; twice as many frames told unseen
    # speakers' words apart far better. `tiny` keeps 12.5 frames/s because each step of longer
    # clips (sentences) costs more at 25. 192 wide: over several seeds it told unseen
    # speakers apart better than 128 (and 256 no better), at a quarter more training time.
    "tiny-fine": lambda: _w2v_bert(
        hidden=192, layers=3, heads=4, rate=8000, mel_bins=40, stride=2, ffn=2
    ),
    # `tiny-fine` 128 wide: the shape of the shipped `speech-tiny` encoder, so `voxclass
    # pretrain`'s default remakes it.
    "tiny-fine-128": lambda: _w2v_bert(
        hidden=128, layers=3, heads=4, rate=8000, mel_bins=40, stride=2, ffn=2
    ),
    # Wideband audio (16 kHz): 80 mel bins, 25 frames/s, a larger conformer.
    "small": lambda: _w2v_bert(hidden=256, layers=6, heads=4, rate=16000, mel_bins=80, stride=4),
    "tiny-wav2vec2": lambda: _w2v2(hidden=144, layers=4, heads=4),
}


def preset_config(name: str) -> ModelSpec:
    """Config (without labels) and feature extractor of a built-in preset."""
    return PRESETS[name]()
