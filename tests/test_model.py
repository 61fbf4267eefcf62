import pytest
from conftest import write_local_wav2vec2
from transformers import AutoModelForAudioClassification

from voxclass.model import ModelError, build_model


def test_local_directory_gets_a_new_head_for_our_labels(tmp_path):
    model, extractor = build_model(str(write_local_wav2vec2(tmp_path / "w2v")), ["a", "b", "c"])
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert model.classifier.out_features == 3
    assert extractor.return_attention_mask is False


def test_presets_have_specaugment_and_load_with_stock_transformers(tmp_path):
    for name in ("tiny", "small", "tiny-wav2vec2"):
        model, _ = build_model(name, ["a", "b"])
        assert model.config.mask_time_prob > 0
        model.save_pretrained(tmp_path / name)
        assert type(AutoModelForAudioClassification.from_pretrained(tmp_path / name)) is type(model)


def test_unreachable_hub_model_and_missing_directory_fail_clearly(no_network, tmp_path):
    with pytest.raises(ModelError, match="cannot load 'facebook/wav2vec2-base' from the Hugging"):
        build_model("facebook/wav2vec2-base", ["a", "b"])
    with pytest.raises(ModelError, match="not a model directory"):
        build_model(str(tmp_path), ["a", "b"])
    assert no_network == []  # failed from offline mode, without trying the network
