import numpy as np
import pytest
import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForSequenceClassification,
)

from voxclass.exact_batches import ClipGroupNorm, mask_padding
from voxclass.features import extract_one, pad_batch
from voxclass.model import build_model

SECONDS = (0.3, 1.0, 2.7, 0.55, 4.0)


def layer_norm_wav2vec2():
    """wav2vec2-large's norms (a layer norm per convolution) in a small model, saved without
    masks as base-size models are."""
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
        num_feat_extract_layers=3, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True, num_labels=3,
    )  # fmt: skip
    return Wav2Vec2ForSequenceClassification(config), Wav2Vec2FeatureExtractor(
        return_attention_mask=False
    )


def logits(model, extractor, features) -> np.ndarray:
    with torch.inference_mode():
        return model(**pad_batch(extractor, features)).logits.numpy()


@pytest.mark.parametrize("kind", ["group norm", "group norm, keyword head", "layer norm"])
def test_clips_of_any_length_score_in_one_batch_as_they_do_alone(kind):
    torch.manual_seed(0)
    if kind == "layer norm":
        model, extractor = layer_norm_wav2vec2()
    else:
        head = "keywords" if "keyword" in kind else "mean"
        model, extractor = build_model("tiny-wav2vec2", ["a", "b", "c"], head=head)
    model.eval()
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(int(s * 16000)).astype(np.float32) for s in SECONDS]
    features = [extract_one(extractor, w, 16000) for w in waves]
    alone = np.concatenate([logits(model, extractor, [f]) for f in features])
    padded = logits(model, extractor, features)  # transformers' way: zeros, no mask
    keys = list(model.state_dict())

    assert mask_padding(model, extractor) and extractor.return_attention_mask
    masked = pad_batch(extractor, features)
    assert masked["attention_mask"].sum(1).tolist() == [len(f) for f in features]
    np.testing.assert_allclose(logits(model, extractor, features), alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(  # and alone, as before
        np.concatenate([logits(model, extractor, [f]) for f in features]), alone, atol=1e-5
    )
    assert list(model.state_dict()) == keys  # the same weights under the same names
    replaced = any(isinstance(m, ClipGroupNorm) for m in model.modules())
    assert replaced == kind.startswith("group norm")
    if replaced:  # the check above can fail: padding moves a group-norm model's logits
        assert np.abs(padded - alone).max() > 1e-3


def test_models_that_have_masks_or_are_not_wav2vec2_are_left_alone():
    model, extractor = build_model("tiny", ["a", "b"])  # Wav2Vec2-BERT: masked already
    assert not mask_padding(model, extractor)
    model, extractor = build_model("tiny-wav2vec2", ["a", "b"])
    extractor.return_attention_mask = True
    assert not mask_padding(model, extractor)
    assert not any(isinstance(m, ClipGroupNorm) for m in model.modules())
