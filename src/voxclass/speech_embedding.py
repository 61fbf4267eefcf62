"""Google's `speech_embedding` encoder as a transformers audio classifier (the
`speech-embedding` preset).

The encoder (Apache-2.0) is a stack of convolutions that Google trained on a large amount of
real speech for keyword spotting; openWakeWord ships it and its log-mel front end as ONNX graphs
in its wheel, and `speech_embedding_onnx` copies their weights into the modules here. The port
is exact up to float rounding, with one chosen difference: the front end's 80 dB floor is taken
per clip, where the ONNX graph takes it over the whole batch (see `LogMel`).

    wave in [-1, 1] at 16 kHz -> * 32767 -> log-mel (dB) -> / 10 + 2 -> encoder: one 96-value
    embedding per 76 frames (0.78 s) every 8 frames (80 ms) -> their mean and maximum over
    the clip -> layer norm -> linear head

This file imports only torch, transformers and `pooled_head`: `save_pretrained` copies both
beside the weights, so a trained folder loads with stock
`pipeline("audio-classification", model=DIR, trust_remote_code=True)` without voxclass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig

from .pooled_head import PooledHeadModel, register_model

MODEL_TYPE = "voxclass-speech-embedding"
SAMPLE_RATE = 16000
INT16_SCALE = 32767.0  # the front end expects int16-range samples as float32
N_FFT = 512
HOP = 160  # 10 ms
BINS = N_FFT // 2 + 1
LOG_FLOOR = 1e-10
TOP_DB = 80.0
MEL_BANDS = 32
WINDOW_FRAMES = 76  # the encoder's input: 76 frames (0.78 s of audio)
WINDOW_STEP = 8  # its output step: 8 frames = 80 ms
EMBEDDING_DIM = 96
MIN_CONTEXT_SECONDS = (N_FFT + HOP * (WINDOW_FRAMES - 1)) / 2 / SAMPLE_RATE
"""Half of one window's samples (12,512): the silence on both sides fills a window alone."""


def scale_log_mel(log_mel: Tensor) -> Tensor:
    """openWakeWord's transform between the two graphs: dB / 10 + 2 (the encoder's input
    scale; not part of either graph)."""
    return log_mel / 10 + 2


class LogMel(nn.Module):
    """The front end: framed DFT as a strided convolution (512-point DFT of a 400-sample
    periodic Hann window centred in 512 samples, hop 160: 25 ms every 10 ms, no padding),
    power, 32 mel bands (62-3781 Hz), 10*log10 after a 1e-10 floor, then a floor 80 dB below
    the maximum. Buffers only: nothing here trains.

    The ONNX graph's maximum is over the whole batch, so a quiet clip batched with a loud one
    gets a higher floor than alone. Here it is over each clip's own frames and bands, so a
    clip's features do not depend on its batch mates; for a batch of one both agree."""

    def __init__(self):
        super().__init__()
        # [2 * bins, 1, n_fft]: real rows, then imaginary rows, the window folded in
        self.register_buffer("dft", torch.zeros(2 * BINS, 1, N_FFT))
        self.register_buffer("mel_matrix", torch.zeros(BINS, MEL_BANDS))

    def forward(self, wave: Tensor) -> Tensor:
        """[batch, samples] int16-range float audio at 16 kHz -> [batch, frames, 32] log-mel in
        dB, frames = (samples - 512) // 160 + 1. Zeros after a clip (batch padding) never raise
        its maximum, so they leave its own frames as they are alone."""
        spectrum = F.conv1d(wave.unsqueeze(1), self.dft, stride=HOP)  # [batch, 2*bins, frames]
        real, imag = spectrum.chunk(2, dim=1)
        power = (real.pow(2) + imag.pow(2)).transpose(1, 2)  # [batch, frames, bins]
        mel = torch.matmul(power, self.mel_matrix).clamp(min=LOG_FLOOR)
        db = torch.log(mel) * 10.0 / 2.3025851  # the graph's op order, so rounding matches
        ceiling = db.amax(dim=(1, 2), keepdim=True)
        return torch.maximum(db, ceiling - TOP_DB)


class ClippedLeakyReLU(nn.Module):
    """LeakyReLU(0.2), then max(., -0.4): the graph's LeakyRelu + Max pair, which bounds the
    negative side (inputs below -2 all map to -0.4)."""

    slope = 0.2
    lower = -0.4

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.slope).clamp(min=self.lower)


# (channels, (1x3, 3x1) conv pairs, max-pool window = stride) after the 3x3 stem conv to 24.
# Time is the height axis, mel bands the width.
STAGES = ((24, 1, (2, 2)), (48, 2, (1, 2)), (72, 2, (2, 2)), (96, 2, (1, 2)), (96, 2, (2, 2)))


def _conv(c_in: int, c_out: int, kernel: tuple[int, int], bias: bool = True) -> nn.Conv2d:
    """Padding 1 along mel bands when the kernel spans 3 of them ('same'), none along time
    ('valid'), as in the graph."""
    return nn.Conv2d(c_in, c_out, kernel, padding=(0, kernel[1] // 2), bias=bias)


class EmbeddingNet(nn.Module):
    """The encoder: 20 convs (batch norm folded in), each but the last followed by
    `ClippedLeakyReLU`, 5 max-pools. On one 76-frame window: time 76 -> 74 -> 72 -> pool 36 ->
    32 -> 28 -> pool 14 -> 10 -> 6 -> pool 3 -> last 3x1 conv (no bias, no activation) -> 1;
    bands 32 -> 16 -> 8 -> 4 -> 2 -> 1 over the pools.

    Along time every conv is 'valid' and the pools' strides multiply to 8, so on a longer run
    of frames output step t is exactly the network on frames [8t, 8t + 76): one pass gives
    every window's embedding, without cutting (and recomputing) overlapping windows."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [_conv(1, 24, (3, 3)), ClippedLeakyReLU()]
        channels = 24
        for width, pairs, pool in STAGES:
            for _ in range(pairs):
                layers += [_conv(channels, width, (1, 3)), ClippedLeakyReLU()]
                layers += [_conv(width, width, (3, 1)), ClippedLeakyReLU()]
                channels = width
            layers.append(nn.MaxPool2d(pool))
        layers.append(_conv(channels, EMBEDDING_DIM, (3, 1), bias=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, log_mel: Tensor) -> Tensor:
        """[n, frames >= 76, 32] scaled log-mel -> [n, steps, 96], step t from frames
        [8t, 8t + 76). A 76-frame input gives one step."""
        return self.layers(log_mel.unsqueeze(1)).squeeze(3).transpose(1, 2)


class SpeechEmbedding(nn.Module):
    """Front end (`log_mel`, frozen buffers) and encoder (`embed`, trainable)."""

    def __init__(self):
        super().__init__()
        self.front_end = LogMel()
        self.encoder = EmbeddingNet()

    def log_mel(self, wave: Tensor) -> Tensor:
        """[batch, samples] int16-range audio -> [batch, frames, 32] dB (unscaled)."""
        return self.front_end(wave)

    def embed(self, log_mel: Tensor) -> Tensor:
        """[n, frames, 32] of `scale_log_mel` output -> [n, steps, 96]."""
        return self.encoder(log_mel)

    def forward(self, wave: Tensor) -> Tensor:
        """[batch, samples >= 12512] audio in [-1, 1] at 16 kHz -> [batch, steps, 96]: one
        embedding per 76 frames every 8, openWakeWord's windows."""
        return self.embed(scale_log_mel(self.log_mel(wave * INT16_SCALE)))


class SpeechEmbeddingConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(
        self, context_seconds: float = 1.0, classifier_dropout: float = 0.1, **kwargs
    ) -> None:
        """`context_seconds`: silence added before and after every clip, so that a word
        shorter than the encoder's 0.78 s window is seen in several windows, as a whole and
        off-centre; at least `MIN_CONTEXT_SECONDS`, so that even an empty clip fills one
        window. `classifier_dropout`: on the pooled features, while training."""
        if context_seconds < MIN_CONTEXT_SECONDS:
            raise ValueError(
                f"context_seconds {context_seconds}: give at least {MIN_CONTEXT_SECONDS:.3f}"
            )
        super().__init__(**kwargs)
        self.context_seconds = context_seconds
        self.classifier_dropout = classifier_dropout


class SpeechEmbeddingForAudioClassification(PooledHeadModel):
    """`SpeechEmbedding` steps of the clip (padded with `context_seconds` of silence on each
    side), their mean and maximum over the clip's own steps, layer norm, dropout, linear head.
    Input: 16 kHz audio in [-1, 1] (`input_values`) and its `attention_mask` (1 for samples of
    the clip, 0 for batch padding after it); a clip scores the same alone and in any batch."""

    config_class = SpeechEmbeddingConfig
    main_input_name = "input_values"
    base_model_prefix = "speech_embedding"

    def __init__(self, config: SpeechEmbeddingConfig):
        super().__init__(config)
        self.speech_embedding = SpeechEmbedding()
        self.add_head(2 * EMBEDDING_DIM)
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        """Keep the pretrained encoder as it is; only the norm and the head train (voxclass's
        default for a pretrained model, `--freeze-feature-encoder false` to fine-tune it)."""
        for parameter in self.speech_embedding.parameters():
            parameter.requires_grad = False

    def pooled(self, input_values: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """[batch, samples] -> [batch, 192]: mean and maximum of the clip's own steps."""
        context = round(self.config.context_seconds * SAMPLE_RATE)
        if attention_mask is None:
            lengths = torch.full_like(input_values[:, 0], input_values.shape[1], dtype=torch.long)
        else:
            lengths = attention_mask.sum(dim=1)
        steps = self.speech_embedding(F.pad(input_values, (context, context)))  # [b, steps, 96]
        # the steps that lie inside each clip's own padded span, as it would be alone
        own_frames = torch.div(lengths + 2 * context - N_FFT, HOP, rounding_mode="floor") + 1
        own_steps = torch.div(own_frames - WINDOW_FRAMES, WINDOW_STEP, rounding_mode="floor") + 1
        index = torch.arange(steps.shape[1], device=steps.device)
        inside = (index[None, :] < own_steps[:, None]).unsqueeze(2)  # [batch, steps, 1]
        mean = (steps * inside).sum(dim=1) / own_steps[:, None].to(steps.dtype)
        peak = steps.masked_fill(~inside, torch.finfo(steps.dtype).min).amax(dim=1)
        return torch.cat([mean, peak], dim=1)


SpeechEmbeddingConfig.register_for_auto_class()
SpeechEmbeddingForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")


def register() -> None:
    """Let transformers' Auto classes load this model type in this process."""
    register_model(SpeechEmbeddingConfig, SpeechEmbeddingForAudioClassification)
