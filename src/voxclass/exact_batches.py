"""Clips of different lengths in one batch, each scored as it is alone, for wav2vec2 models
saved without attention masks.

wav2vec2-base and models like it (`return_attention_mask` false in their extractor, as the
`tiny-wav2vec2` preset) are told by transformers to be padded with zeros and given no mask:
their first convolution's group norm takes each channel's statistics over every frame,
padding included, so a padded clip scores otherwise than alone. Without a mask a batch may
only hold clips of one length (`Classifier`), so on clips of varied lengths every forward is
one clip, and the int8 matrix kernels run on matrices of a few dozen rows.

`mask_padding` makes that norm take its statistics over each clip's own frames
(`ClipGroupNorm`) and lets the model have its mask; the rest of wav2vec2 already honours it
(padding zeroed before the positional convolution, masked attention, masked pooling). Frames
of a clip's own length see only its own samples through the convolutions, so nothing else
changes. `voxclass export` traces the masked model, so the graph batches the same way.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from transformers import Wav2Vec2Model


class ClipGroupNorm(torch.nn.GroupNorm):
    """wav2vec2's first norm (one group per channel, statistics over time) over each clip's own
    frames, given per forward in `own.frames` (one count per clip; None: every frame, as
    GroupNorm). Thread-local, so concurrent forwards on one model do not mix their clips."""

    def __init__(self, channels: int, eps: float):
        super().__init__(num_groups=channels, num_channels=channels, eps=eps, affine=True)
        self.own = threading.local()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = getattr(self.own, "frames", None)
        if frames is None:
            return super().forward(x)
        keep = torch.arange(x.shape[-1], device=x.device) < frames[:, None]
        keep = keep.unsqueeze(1).to(x.dtype)  # [batch, 1, time]
        count = keep.sum(-1, keepdim=True)
        mean = (x * keep).sum(-1, keepdim=True) / count
        var = ((x - mean) * keep).pow(2).sum(-1, keepdim=True) / count
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None] + self.bias[:, None]


def mask_padding(model: Any, extractor: Any) -> bool:
    """Let a wav2vec2 model whose extractor gives no attention mask batch clips of any lengths
    exactly: its first group norm (if it has one) becomes a `ClipGroupNorm` fed by the
    `attention_mask` the model is called with (as a keyword), and the extractor gives masks
    from now on. Whether it did; any other model or extractor is left as it is.

    Only inference should call this: training keeps transformers' padding."""
    if getattr(extractor, "return_attention_mask", True):
        return False
    encoders = [m for m in model.modules() if isinstance(m, Wav2Vec2Model)]
    if len(encoders) != 1:
        return False
    first = encoders[0].feature_extractor.conv_layers[0]
    old = getattr(first, "layer_norm", None)
    if isinstance(old, torch.nn.GroupNorm) and old.num_groups == old.num_channels:
        norm = ClipGroupNorm(old.num_channels, old.eps).to(old.weight.device, old.weight.dtype)
        norm.load_state_dict(old.state_dict())
        first.layer_norm = norm
        kernel, stride = first.conv.kernel_size[0], first.conv.stride[0]

        def own_frames(module: Any, args: tuple, kwargs: dict) -> None:
            mask = kwargs.get("attention_mask")
            norm.own.frames = None if mask is None else (mask.sum(-1) - kernel) // stride + 1

        model.register_forward_pre_hook(own_frames, with_kwargs=True)
    extractor.return_attention_mask = True
    return True
