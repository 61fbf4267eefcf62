import numpy as np
import pytest
import torch
from conftest import TONES, burst
from typer.testing import CliRunner

from voxclass import Classifier
from voxclass.audio import load_audio
from voxclass.cli import app
from voxclass.export import OnnxModel, export, validation_clips
from voxclass.features import extract_one, pad_batch
from voxclass.model import ModelError, build_model


def save_preset(name: str, path):
    model, extractor = build_model(name, ["zero", "one", "two"])
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return path


def fsdd_clips(fsdd, rate: int) -> list[np.ndarray]:
    return [load_audio(fsdd / d / f"{d}_jackson_0.wav", rate) for d in ("0", "3", "7")]


@pytest.mark.parametrize("preset", ["tiny", "small", "tiny-wav2vec2"])
def test_preset_export_matches_torch_on_real_and_synthetic_clips(preset, fsdd, tmp_path):
    src = save_preset(preset, tmp_path / "model")
    torch_clf = Classifier.load(src)
    rate = torch_clf.sampling_rate
    clips = fsdd_clips(fsdd, rate) + validation_clips(rate, 9.0)[::3]
    report = export(src, tmp_path / "onnx", clips=clips)
    assert report.max_abs_diff < 1e-4 and report.agreement == 1.0 and report.clips == 6

    onnx_clf = Classifier.load(tmp_path / "onnx")
    assert onnx_clf.backend == "onnx" and onnx_clf.labels == torch_clf.labels
    assert onnx_clf.sampling_rate == rate and onnx_clf.max_seconds == torch_clf.max_seconds
    np.testing.assert_allclose(
        onnx_clf.probabilities(clips), torch_clf.probabilities(clips), atol=1e-4
    )

    # Dynamic batch and time axes: batch 1 and 7, 1 s and 9 s, in one graph.
    rng = np.random.default_rng(3)
    graph = OnnxModel(tmp_path / "onnx")
    model, extractor = torch_clf.model, torch_clf.extractor
    for seconds in ([1.0], [9.0], [1.0, 9.0, 2.5, 4.0, 9.0, 1.0, 6.0]):
        waves = [0.1 * rng.standard_normal(int(s * rate)).astype(np.float32) for s in seconds]
        features = [extract_one(extractor, w, rate) for w in waves]
        with torch.inference_mode():
            expected = model(**pad_batch(extractor, features)).logits.numpy()
        got = graph.logits(extractor, features)
        assert got.shape == (len(seconds), 3)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_int8_export_of_a_trained_model_keeps_its_predictions(trained_tone_model, tmp_path):
    report = export(trained_tone_model, tmp_path / "int8", int8=True)
    assert report.int8 and report.agreement >= 0.9
    fp32_size = (trained_tone_model / "model.safetensors").stat().st_size
    assert report.size_bytes < 0.5 * fp32_size  # int8 weights: about a quarter
    clf = Classifier.load(tmp_path / "int8")
    reference = Classifier.load(trained_tone_model)
    waves = [burst(f, s, 8000, seed=7) for f in TONES.values() for s in (0.8, 1.4)]
    assert clf.backend == "onnx"
    assert (clf.probabilities(waves).argmax(1) == reference.probabilities(waves).argmax(1)).all()
    assert [p.labels[0] for p in clf.predict_batch(waves, 8000)[::2]] == list(TONES)


def test_exports_a_model_saved_by_plain_transformers(tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    config = ASTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_length=200,
        num_mel_bins=32,
        num_labels=2,
    )
    ASTForAudioClassification(config).save_pretrained(tmp_path / "ast")
    ASTFeatureExtractor(num_mel_bins=32, max_length=200).save_pretrained(tmp_path / "ast")
    report = export(tmp_path / "ast", tmp_path / "onnx")
    assert report.max_abs_diff < 1e-4 and report.agreement == 1.0
    assert Classifier.load(tmp_path / "onnx").backend == "onnx"


def test_failed_validation_leaves_nothing_behind(tmp_path):
    src = save_preset("tiny-wav2vec2", tmp_path / "model")
    with pytest.raises(ModelError, match="does not match torch"):
        export(src, tmp_path / "out", max_diff=-1.0)  # an impossible bound fails loudly
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_cli_export_and_its_errors(tmp_path):
    src = save_preset("tiny-wav2vec2", tmp_path / "model")
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(src), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement 100.0%" in result.output
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    with pytest.raises(ModelError, match="not empty"):
        export(src, tmp_path / "onnx")
    with pytest.raises(ModelError, match="not a model directory"):
        export(tmp_path / "nowhere", tmp_path / "x")
