import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import soundfile as sf
import torch
from conftest import TONES, burst, free_port, run_cli, write_local_wav2vec2, write_tone_folder

from voxclass import Classifier
from voxclass.audio import load_audio
from voxclass.data import DataError
from voxclass.export import (
    INT8_FORMS,
    ExportReport,
    export,
    held_out_note,
    int8_forms,
    quantize_static_int8,
    top1_margins,
    validation_clips,
)
from voxclass.features import extract_one, pad_batch
from voxclass.model import ModelError, build_model
from voxclass.runtime import OnnxBackend, is_dynamic_int8
from voxclass.stream import StreamSettings, stream_file


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
    model, extractor = torch_clf.model, torch_clf.extractor
    graph = OnnxBackend(tmp_path / "onnx" / "model.onnx", model.config, extractor)
    for seconds in ([1.0], [9.0], [1.0, 9.0, 2.5, 4.0, 9.0, 1.0, 6.0]):
        waves = [0.1 * rng.standard_normal(int(s * rate)).astype(np.float32) for s in seconds]
        features = [extract_one(extractor, w, rate) for w in waves]
        with torch.inference_mode():
            expected = model(**pad_batch(extractor, features)).logits.numpy()
        got = graph.logits(features)
        assert got.shape == (len(seconds), 3)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_wav2vec2_export_batches_clips_of_any_length_as_each_scores_alone(tmp_path):
    # wav2vec2-base style (group norm, saved without masks): the graph takes a mask and
    # normalizes each clip over its own frames, so Classifier batches clips of any lengths.
    src = save_preset("tiny-wav2vec2", tmp_path / "model")
    export(src, tmp_path / "onnx")
    saved = json.loads((tmp_path / "onnx" / "preprocessor_config.json").read_text())
    assert saved["return_attention_mask"] is True
    assert not json.loads((src / "preprocessor_config.json").read_text())["return_attention_mask"]
    clf = Classifier.load(tmp_path / "onnx")
    assert clf.masked
    assert [i.name for i in clf.runtime.session.get_inputs()] == ["input_values", "attention_mask"]

    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    plain = AutoModelForAudioClassification.from_pretrained(src).eval()  # not given masks
    extractor = AutoFeatureExtractor.from_pretrained(src)
    rng = np.random.default_rng(5)
    waves = [0.1 * rng.standard_normal(int(s * 16000)).astype(np.float32)
             for s in (0.4, 2.2, 1.0, 3.1)]  # fmt: skip
    features = [extract_one(extractor, w, 16000) for w in waves]
    with torch.inference_mode():
        alone = [plain(**pad_batch(extractor, [f])).logits.numpy() for f in features]
        padded = plain(**pad_batch(extractor, features)).logits.numpy()
    alone = np.concatenate(alone)
    np.testing.assert_allclose(clf.runtime.logits(features), alone, rtol=0, atol=1e-4)
    assert np.abs(padded - alone).max() > 1e-3  # what a padded batch without the mask gives


def test_int8_export_of_a_trained_model_keeps_its_predictions(trained_tone_model, tmp_path):
    report = export(trained_tone_model, tmp_path / "int8", int8=True)
    assert report.int8  # its agreement figure is checked below, against onnxruntime run here
    fp32_size = (trained_tone_model / "model.safetensors").stat().st_size
    assert report.size_bytes < 0.5 * fp32_size  # int8 weights: about a quarter
    clf = Classifier.load(tmp_path / "int8")
    reference = Classifier.load(trained_tone_model)
    waves = [burst(f, s, 8000, seed=7) for f in TONES.values() for s in (0.8, 1.4)]
    assert clf.backend == "onnx"
    assert (clf.probabilities(waves).argmax(1) == reference.probabilities(waves).argmax(1)).all()
    assert [p.labels[0] for p in clf.predict_batch(waves, 8000)[::2]] == list(TONES)


def test_a_dynamic_int8_clip_scores_the_same_whatever_its_batch(trained_tone_model, tmp_path):
    export(trained_tone_model, tmp_path / "int8", int8=True)
    clf = Classifier.load(tmp_path / "int8")
    waves = [burst(f, 1.0, 8000, seed=s) for s in (1, 2) for f in TONES.values()]
    together = clf.probabilities(waves, batch_size=16)
    alone = np.concatenate([clf.probabilities([w]) for w in waves])
    assert np.array_equal(together, alone)  # bit for bit: no neighbour changes a clip's scale
    graph = clf.runtime
    graph.per_clip = False  # the whole batch through one run: the scales are shared
    assert not np.array_equal(clf.probabilities(waves, batch_size=16), alone)


def test_an_export_keeps_to_the_thread_budget_of_omp_num_threads(
    trained_tone_model, tmp_path, monkeypatch
):
    # Ray sets OMP_NUM_THREADS to each actor's CPU share; onnxruntime would otherwise take
    # every core in every actor, and two actors on two cores would fight for them.
    export(trained_tone_model, tmp_path / "onnx")
    threads = {}
    for value in ("1", "3", "", "zero"):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        session = Classifier.load(tmp_path / "onnx").runtime.session
        threads[value] = session.get_session_options().intra_op_num_threads
    assert threads == {"1": 1, "3": 3, "": 0, "zero": 0}  # 0: onnxruntime's own default


def test_int8_agreement_is_what_onnxruntime_gives_against_torch(tmp_path):
    """The reported top-1 agreement, recomputed with onnxruntime run directly on model.onnx.
    Random weights give near-tied scores, so int8 flips some answers: a figure to get right,
    not a bound to pass. Dynamic int8 sets its scales per batch, so the clips go in as export
    validates them and `Classifier` runs them: one at a time."""
    torch.manual_seed(0)
    src = save_preset("tiny", tmp_path / "model")
    reference = Classifier.load(src)
    rate, extractor = reference.sampling_rate, reference.extractor
    rng = np.random.default_rng(0)
    clips = [0.1 * rng.standard_normal(rate).astype(np.float32) for _ in range(24)]
    report = export(src, tmp_path / "int8", int8=True, clips=clips, min_agreement=0.0)

    session = onnxruntime.InferenceSession(str(tmp_path / "int8" / "model.onnx"))
    kinds = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    int8_top1 = []
    for clip in clips:
        features = [extract_one(extractor, clip, rate)]
        padded = extractor.pad({extractor.model_input_names[0]: features}, return_tensors="np")
        feed = {i.name: padded[i.name].astype(kinds[i.type]) for i in session.get_inputs()}
        int8_top1.extend(session.run(["logits"], feed)[0].argmax(1))
    probs = reference.probabilities(clips)
    flipped = np.asarray(int8_top1) != probs.argmax(1)
    agreement = np.mean(~flipped)
    assert 0.5 < agreement < 1.0  # random weights: some answers flip, most do not
    assert report.clips == len(clips) and report.agreement == agreement
    # The largest torch margin among the flipped clips; a softmax keeps the logits' gaps.
    margins = top1_margins(np.log(probs))
    assert report.flipped_margin == pytest.approx(margins[flipped].max(), abs=1e-4)
    assert report.flipped_margin < np.median(margins)  # near-ties flip first
    saved = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert saved["flipped_margin"] == report.flipped_margin
    with pytest.raises(ModelError, match=r"on 24 clips, torch's margin on those it answers other"):
        export(src, tmp_path / "strict", int8=True, clips=clips, min_agreement=1.0)


def test_top1_margins_are_the_gap_between_the_two_best_scores():
    logits = np.array([[2.0, 0.5, 1.0], [1.0, 1.0, -3.0], [-1.0, -4.0, -2.5]])
    np.testing.assert_allclose(top1_margins(logits), [1.0, 0.0, 1.5])


def test_static_int8_calibrated_on_clips_quantizes_the_convolutions_and_agrees(
    trained_tone_model, tmp_path
):
    """--calibrate: every Conv and MatMul but the classification head's reads int8 weights
    and int8 activations (QDQ pairs, which onnxruntime fuses into integer kernels), scales
    come from the given clips, and the answers stay those of torch, on held-out clips and on
    fresh bursts."""
    import onnx

    data = write_tone_folder(tmp_path / "clips", per_class=8)  # 24 clips: 18 calibrate, 6 check
    report = export(trained_tone_model, tmp_path / "int8", int8=True, calibrate=data)
    assert report.calibration["clips"] == 18 and report.calibration["files_listed"] == 24
    assert report.clips == 6 and "not used to calibrate" in report.checked_on
    assert report.agreement == 1.0 and report.form == "static int8"
    assert report.calibration["tried"] == []  # it agreed: nothing given up
    saved = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert saved["calibration"]["method"] == "MinMax" and saved["calibration"]["format"] == "QDQ"

    graph = onnx.load(tmp_path / "int8" / "model.onnx").graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    made_by.update({init.name: "initializer" for init in graph.initializer})
    heavy = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    head = [n for n in heavy if "/projector/" in n.name or "/classifier/" in n.name]
    assert len(head) == 2 and sum(n.op_type == "Conv" for n in heavy) >= 3  # conformer convs
    for node in heavy:
        inputs = [made_by.get(name) for name in node.input[:2]]
        assert inputs == (
            ["DequantizeLinear"] * 2 if node not in head else [inputs[0], "initializer"]
        ), node
    assert all(made_by.get(n.input[0]) != "DequantizeLinear" for n in head)

    clf, reference = Classifier.load(tmp_path / "int8"), Classifier.load(trained_tone_model)
    waves = [burst(f, s, 8000, seed=11) for f in TONES.values() for s in (0.7, 1.3)]
    assert (clf.probabilities(waves).argmax(1) == reference.probabilities(waves).argmax(1)).all()


def test_calibration_data_errors_name_the_data(tmp_path, monkeypatch, capsys):
    src = save_preset("tiny", tmp_path / "model")
    capsys.readouterr()  # save_pretrained's progress bar
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken" / "a"
    broken.mkdir(parents=True)
    (broken / "x.wav").write_text("not audio")
    for data, message in (
        (empty, "no audio files found"),
        (broken.parent, "none of its 1 sampled audio files decodes"),
    ):
        args = ("export", src, "--out", tmp_path / "out", "--int8", "--calibrate", data)
        code, _, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2 and message in err and str(data) in err and len(err.splitlines()) == 1
        assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="none of its 1 sampled"):
        export(src, tmp_path / "out", int8=True, calibrate=broken.parent)
    with pytest.raises(ModelError, match="add --int8"):
        export(src, tmp_path / "out", calibrate=empty)


def test_static_int8_keeps_the_raw_waveform_convolution_in_float(tmp_path):
    """A wav2vec2-style model: the convolution reading the raw waveform stays fp32 (its one
    uint8 scale would have to span silence and shouts), the feature encoder's next ones are
    int8, and export.json says what was kept."""
    import onnx

    torch.manual_seed(0)
    write_local_wav2vec2(tmp_path / "w2v")
    data = write_tone_folder(tmp_path / "clips", per_class=4)
    report = export(
        tmp_path / "w2v", tmp_path / "int8", int8=True, calibrate=data, min_agreement=0.0
    )
    saved = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert saved["calibration"]["kept_float"] == report.calibration["kept_float"]
    assert (
        "convolutions over one input channel (a raw waveform)" in saved["calibration"]["kept_float"]
    )

    graph = onnx.load(tmp_path / "int8" / "model.onnx").graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    convs = {n.name: made_by.get(n.input[0]) for n in graph.node if n.op_type == "Conv"}
    first, second = (next(v for k, v in convs.items() if f"conv_layers.{i}/" in k) for i in (0, 1))
    assert first != "DequantizeLinear" and second == "DequantizeLinear"


def test_calibrated_int8_short_of_min_agreement_gives_up_precision_in_order(
    tmp_path, monkeypatch, capsys
):
    """Below --min-agreement on the held-out clips, static int8 puts the convolutions back in
    fp32, then falls back to dynamic int8, before refusing; export.json and the message say
    which forms fell short. Random weights give near-ties, which static int8 flips."""
    torch.manual_seed(0)
    write_local_wav2vec2(tmp_path / "w2v")
    data = write_tone_folder(tmp_path / "clips", per_class=8)
    (data / "noise").mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        sf.write(data / "noise" / f"{i}.wav", 0.1 * rng.standard_normal(16000), 16000)
    first = export(tmp_path / "w2v", tmp_path / "any", int8=True, calibrate=data, min_agreement=0)
    assert first.form == "static int8" and first.calibration["tried"] == []
    assert first.agreement < 1.0  # the premise: static int8 flips some of these answers

    args = ("export", tmp_path / "w2v", "--out", tmp_path / "all", "--int8", "--calibrate", data)
    code, out, err = run_cli(monkeypatch, capsys, *args, "--min-agreement", "1.0")
    forms = list(INT8_FORMS)
    if code == 0:  # some form agrees on every clip: the first such, after those that did not
        saved = json.loads((tmp_path / "all" / "export.json").read_text())
        tried = saved["calibration"]["tried"]
        assert saved["agreement"] == 1.0 and [t["form"] for t in tried] == forms[: len(tried)]
        assert saved["form"] == forms[len(tried)] and f"({saved['form']}, " in out
        assert saved["calibration"]["kept_float"] == INT8_FORMS[saved["form"]]
        assert is_dynamic_int8(tmp_path / "all") == (saved["form"] == "dynamic int8")
    else:  # none did: refused, naming each form's agreement
        (line,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert "nothing written" in line, err
        found = re.findall(r"(\w[\w ]*?) ([\d.]+)%", line.split("before it: ")[1].split(";")[0])
        tried = [{"form": f, "agreement": float(a) / 100} for f, a in found]
        assert [t["form"] for t in tried] == forms[:2], err
        assert not (tmp_path / "all").exists()
    assert tried[0]["form"] == "static int8"
    assert tried[0]["agreement"] == pytest.approx(first.agreement, abs=1e-3)  # same scales
    assert all(t["agreement"] < 1.0 for t in tried)

    # A bar static int8 meets: kept, with a note when 12 clips are too few to show that bar.
    bar = np.floor(first.agreement * 100) / 100
    args = ("export", tmp_path / "w2v", "--out", tmp_path / "met", "--int8", "--calibrate", data)
    code, out, err = run_cli(monkeypatch, capsys, *args, "--min-agreement", str(bar))
    assert code == 0 and "(static int8, " in out and "before it" not in out, err
    too_few = 3 / first.clips > 1 - bar
    assert (f"note: {first.clips} held-out clips cannot show {bar:.0%}" in out) == too_few, out


def test_the_held_out_note_asks_for_the_clips_that_can_show_the_bar():
    report = ExportReport("x", True, "static int8", 50, 0.1, 1.0, 1, calibration={"clips": 150})
    assert held_out_note(report, 0.99) == (
        "note: 50 held-out clips cannot show 99% agreement (with no flip among them, up to 6% "
        "of answers may still flip); --calibration-clips 1200 holds out 300"
    )
    assert held_out_note(report, 0.9) == ""  # 3 / 50 = 6 %: within the 10 % allowed
    assert held_out_note(report, 1.0) == ""  # no number of clips shows 100 %
    report.clips = 300
    assert held_out_note(report, 0.99) == ""
    report.clips, report.calibration = 50, None
    assert held_out_note(report, 0.99) == ""  # not calibrated: checked on the given clips


def test_static_int8_with_fp32_convolutions_quantizes_only_the_matmuls(tmp_path):
    """The second form tried: no feature-encoder convolution reads int8; the grouped positional
    convolution and every matmul but the head's do."""
    import onnx

    torch.manual_seed(0)
    write_local_wav2vec2(tmp_path / "w2v")
    clf = Classifier.load(tmp_path / "w2v")
    export(tmp_path / "w2v", tmp_path / "fp32", clips=validation_clips(16000, 2.0))
    fp32 = tmp_path / "fp32" / "model.onnx"
    forms = int8_forms(fp32, calibrated=True)
    assert list(forms) == list(INT8_FORMS) and forms["dynamic int8"] is None
    assert set(forms["static int8"]) < set(forms["static int8 with fp32 convolutions"])
    rng = np.random.default_rng(0)
    runner = OnnxBackend(fp32, clf.model.config, clf.extractor)
    feeds = [runner.feed([0.1 * rng.standard_normal(16000).astype(np.float32)]) for _ in range(4)]
    quantize_static_int8(
        fp32, tmp_path / "int8.onnx", feeds, forms["static int8 with fp32 convolutions"]
    )

    graph = onnx.load(tmp_path / "int8.onnx").graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    heavy = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    reads_int8 = {n.name: made_by.get(n.input[0]) == "DequantizeLinear" for n in heavy}
    convs = [n.name for n in heavy if n.op_type == "Conv"]
    matmuls = [n.name for n in heavy if n.op_type != "Conv"]
    head = [n for n in matmuls if "/projector/" in n or "/classifier/" in n]
    encoder = [n for n in convs if "/feature_extractor/" in n]
    assert len(encoder) == 2 and not any(reads_int8[n] for n in encoder)
    (positional,) = set(convs) - set(encoder)  # grouped: it stays int8
    assert "pos_conv" in positional and reads_int8[positional]
    assert head and all(reads_int8[n] != (n in head) for n in matmuls)
    # An export without `form` in export.json was written before the forms: dynamic when int8
    # without calibration, as then.
    for report, dynamic in (
        ({"int8": True}, True),
        ({"int8": True, "calibration": {}}, True),
        ({"int8": True, "calibration": {"clips": 3}}, False),
    ):
        (tmp_path / "export.json").write_text(json.dumps(report))
        assert is_dynamic_int8(tmp_path) == dynamic, report


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


def test_cli_export_and_its_errors(tmp_path, monkeypatch, capsys):
    src = save_preset("tiny-wav2vec2", tmp_path / "model")
    code, out, err = run_cli(monkeypatch, capsys, "export", src, "--out", tmp_path / "onnx")
    assert code == 0, err
    assert "top-1 agreement 100.0%" in out and "margin" not in out  # nothing answered otherwise
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    with pytest.raises(ModelError, match="not an empty folder"):
        export(src, tmp_path / "onnx")
    with pytest.raises(ModelError, match="no such model directory"):
        export(tmp_path / "nowhere", tmp_path / "x")
    strict = ("--int8", "--min-agreement", "1.5")
    code, _, err = run_cli(monkeypatch, capsys, "export", src, "--out", tmp_path / "x", *strict)
    assert code != 0 and "--min-agreement 1.5: give a share from 0 to 1" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


# ------------------------------------------------------------------ inference without torch


def test_predict_on_an_export_imports_neither_torch_transformers_nor_datasets(tmp_path):
    """Start-up of `voxclass predict` on an exported model, from a fresh interpreter: no torch,
    no transformers (its config and log-mel extractor are read in numpy), no datasets."""
    export(save_preset("tiny", tmp_path / "model"), tmp_path / "onnx")
    clip = tmp_path / "one.wav"
    import soundfile as sf

    sf.write(clip, burst(TONES["mid"], 1.0, 8000), 8000)
    probe = (
        "import json, sys\nfrom voxclass import cli\ntry:\n    cli.main(sys.argv[1:])\n"
        "except SystemExit as exit:\n    code = exit.code\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'torch', 'datasets', 'transformers'}\n"
        "print(json.dumps({'code': code, 'heavy': sorted(heavy)}), file=sys.stderr)"
    )
    args = ["predict", str(tmp_path / "onnx"), str(clip), "--format", "json"]
    run = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
    report = json.loads(run.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), run.stderr
    assert json.loads(run.stdout)[0]["labels"][0] in ("zero", "one", "two")
    assert report["heavy"] == [], report


REPO = Path(__file__).resolve().parents[1]


def multipart(field: str, name: str, data: bytes) -> tuple[bytes, str]:
    """A one-file multipart/form-data body and its content type (urllib has no helper)."""
    boundary = "voxclass-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def wait_for_health(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert server.poll() is None, server.stderr.read()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            assert time.monotonic() < deadline, "voxclass serve did not come up"
            time.sleep(0.2)


def install_without_torch(tmp_path: Path) -> str:
    """`pip install voxclass` (core dependencies, no `train` extra) into a fresh venv; asserts
    that no torch came with it and returns the venv's `voxclass` command."""
    package = tmp_path / "package"  # built from a copy, so the build leaves nothing in the repo
    shutil.copytree(
        REPO / "src", package / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, package)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(package)], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr[-2000:]
    no_torch = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert "No module named 'torch'" in no_torch.stderr
    return str(venv / "bin" / "voxclass")


@pytest.mark.slow
@pytest.mark.install
def test_an_exported_model_predicts_evaluates_and_serves_where_torch_is_not_installed(
    trained_tone_model, tmp_path, fsdd
):
    """`pip install voxclass` (no `train` extra) into a fresh venv: no torch arrives, and the
    exported model gives the same answers there through predict, evaluate, stream and serve."""
    export(trained_tone_model, tmp_path / "onnx", int8=True)
    data = write_tone_folder(tmp_path / "tones", per_class=3)
    clips = sorted(str(p) for p in data.glob("*/*.wav"))
    reference = Classifier.load(tmp_path / "onnx").predict_batch(clips)

    cli = install_without_torch(tmp_path)

    run = subprocess.run(
        [cli, "predict", str(tmp_path / "onnx"), *clips, "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    answers = json.loads(run.stdout)
    assert [a["labels"][0] for a in answers] == [p.labels[0] for p in reference]
    assert [a["labels"][0] for a in answers] == [Path(c).parent.name for c in clips]
    np.testing.assert_allclose(
        [a["scores"] for a in answers], [p.scores for p in reference], atol=1e-5
    )

    run = subprocess.run(
        [
            cli,
            "evaluate",
            str(tmp_path / "onnx"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "eval"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["accuracy"] == 1.0

    # Live streaming too (its voice-activity detector needs no torch): the same events.
    onnx = Classifier.load(tmp_path / "onnx")
    gap = np.zeros(onnx.sampling_rate, np.float32)
    digits = [
        load_audio(fsdd / f, onnx.sampling_rate) for f in ("3/3_theo_0.wav", "7/7_george_1.wav")
    ]
    speech = np.concatenate([gap, digits[0], gap, digits[1], gap])
    sf.write(tmp_path / "speech.wav", speech, onnx.sampling_rate, subtype="FLOAT")
    run = subprocess.run(
        [cli, "stream", str(tmp_path / "onnx"), str(tmp_path / "speech.wav")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    expected = list(stream_file(onnx, speech, StreamSettings(onnx.sampling_rate)))
    assert [e["type"] for e in events] == [e["type"] for e in expected]
    assert sum(e["type"] == "segment" for e in events) == 2
    for got, want in zip(events, expected, strict=True):
        assert got.get("labels") == want.get("labels")
        np.testing.assert_allclose(got.get("scores", []), want.get("scores", []), atol=1e-5)

    # A torch model directory there is one clear line pointing at the fix, not an ImportError.
    run = subprocess.run(
        [cli, "predict", str(trained_tone_model), clips[0]], capture_output=True, text=True
    )
    assert run.returncode == 2 and "pip install 'voxclass[train]'" in run.stderr
    assert "Traceback" not in run.stderr

    port = free_port()
    server = subprocess.Popen(
        [cli, "serve", str(tmp_path / "onnx"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, server)
        body, kind = multipart("file", "clip.wav", Path(clips[0]).read_bytes())
        request = urllib.request.Request(
            f"{url}/v1/classify", data=body, headers={"Content-Type": kind}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            served = json.loads(answer.read())
        assert served["labels"][0] == reference[0].labels[0]
        with urllib.request.urlopen(f"{url}/v1/model", timeout=5) as answer:
            assert json.loads(answer.read())["backend"] == "onnx"
    finally:
        server.terminate()
        server.wait(10)
