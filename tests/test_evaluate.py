import csv
import json

import numpy as np
import soundfile as sf
from conftest import TONES, burst, write_tone_mix_manifest
from PIL import Image
from sklearn.metrics import f1_score

from voxclass import Classifier
from voxclass.data import DataConfig, load_data
from voxclass.evaluate import EvalConfig, evaluate
from voxclass.metrics import compute_multi_label_report
from voxclass.model import build_model
from voxclass.noise import Noise, mix_at_snr


def test_evaluate_writes_reports_for_a_model_with_known_behaviour(trained_tone_model, tmp_path):
    # Two of each tone, plus a "mid" clip that is really a low tone: exactly one error.
    data = tmp_path / "data"
    for label, freq in TONES.items():
        (data / label).mkdir(parents=True)
        for i in range(2):
            sf.write(data / label / f"{label}{i}.wav", burst(freq, 1.0, 8000, seed=i), 8000)
    sf.write(data / "mid" / "mislabelled.wav", burst(TONES["low"], 1.0, 8000), 8000)
    (data / "test").mkdir()  # an explicit test split: use the folder as given
    for label in TONES:
        (data / label).rename(data / "test" / label)

    out = tmp_path / "eval"
    report = evaluate(EvalConfig(source=str(data), model=str(trained_tone_model), out=str(out)))
    assert report["clips"] == 7 and report["errors"] == 1
    assert np.isclose(report["accuracy"], 6 / 7)
    assert report["per_class"]["low"]["precision"] == 2 / 3
    assert report["per_class"]["mid"]["recall"] == 2 / 3

    saved = json.loads((out / "report.json").read_text())
    assert saved["accuracy"] == report["accuracy"] and saved["confusion"] == report["confusion"]
    errors = list(csv.DictReader((out / "errors.csv").open()))
    assert len(errors) == 1 and errors[0]["path"].endswith("mislabelled.wav")
    assert (errors[0]["true_label"], errors[0]["predicted_label"]) == ("mid", "low")
    assert "confusion.png" in (out / "report.md").read_text()
    with Image.open(out / "confusion.png") as image:
        assert image.format == "PNG" and min(image.size) > 400


def write_tone_test_set(root, per_class: int = 4):
    """An audiofolder with an explicit test split of tone bursts (used as given)."""
    for label, freq in TONES.items():
        (root / "test" / label).mkdir(parents=True)
        for i in range(per_class):
            sf.write(root / "test" / label / f"{i}.wav", burst(freq, 1.0, 8000, seed=i), 8000)
    return root


def test_accuracy_under_white_noise_falls_monotonically_with_snr(trained_tone_model, tmp_path):
    data = write_tone_test_set(tmp_path / "data")
    # The tones stay recognisable in white noise down to about -10 dB (a narrow-band tone keeps
    # its own band's SNR high), so the SNRs go on down until the curve drops.
    snrs = [30.0, 18.0, 6.0, 0.0, -10.0, -20.0, -30.0]
    out = tmp_path / "eval"
    config = EvalConfig(
        source=str(data),
        model=str(trained_tone_model),
        out=str(out),
        snr=snrs,
        noise=["white", "babble"],
    )
    report = evaluate(config)
    noise = report["noise"]
    assert noise["clean"] == {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    assert noise["seed"] == config.seed and noise["silent_clips"] == 0
    assert list(noise["curves"]) == ["white", "babble"]
    # Each point recomputed here from the clips: the noise drawn from the report's seed, mixed
    # at the point's SNR, scored by the classifier directly, metrics by hand and by sklearn.
    clf = Classifier.load(trained_tone_model)
    ds = load_data(DataConfig(source=str(data)))["test"]
    waves = [clf.load_wave(a) for a in ds["audio"]]
    truth = [clf.labels.index(ds.features["label"].names[i]) for i in ds["label"]]
    for name, points in noise["curves"].items():
        assert [p["snr_db"] for p in points] == snrs
        drawn = Noise(name).for_clips(waves, config.seed)
        for point in points:
            mixed = [mix_at_snr(w, n, point["snr_db"]) for w, n in zip(waves, drawn, strict=True)]
            predicted = clf.probabilities(mixed).argmax(1)
            assert point["accuracy"] == np.mean(predicted == truth), (name, point)
            assert np.isclose(point["macro_f1"], f1_score(truth, predicted, average="macro"))
    babble = [p["accuracy"] for p in noise["curves"]["babble"]]
    assert babble[-1] < babble[0], f"babble never hurt: {babble}"  # the curve measures something
    white = [report["accuracy"]] + [p["accuracy"] for p in noise["curves"]["white"]]
    assert all(later <= earlier for earlier, later in zip(white, white[1:], strict=False)), white
    assert white[-1] < white[0], f"accuracy never dropped: {white}"

    assert json.loads((out / "report.json").read_text())["noise"] == noise
    markdown = (out / "report.md").read_text()
    assert "## Under noise" in markdown and "| -30 dB |" in markdown and "snr.png" in markdown
    with Image.open(out / "snr.png") as image:
        assert image.format == "PNG" and min(image.size) > 400
    again = evaluate(config)  # same seed, same noisy clips, same numbers
    assert again["noise"] == noise


def test_evaluate_scores_a_multi_label_model_by_label_sets(tmp_path):
    model, extractor = build_model(
        "tiny", ["high", "low", "mid"], problem_type="multi_label_classification"
    )
    model.eval().save_pretrained(tmp_path / "model")
    extractor.save_pretrained(tmp_path / "model")
    manifest = write_tone_mix_manifest(tmp_path / "data", per_set=2)
    out = tmp_path / "eval"
    config = EvalConfig(
        source=str(manifest), model=str(tmp_path / "model"), out=str(out), snr=[10.0, -10.0]
    )
    report = evaluate(config)  # multi_label comes from the model, not the config
    curve = report.pop("noise")["curves"]["white"]
    assert [p["snr_db"] for p in curve] == [10.0, -10.0]

    clf = Classifier.load(tmp_path / "model")
    ds = load_data(DataConfig(source=str(manifest), multi_label=True))["test"]
    waves = [clf.load_wave(a) for a in ds["audio"]]
    truth = [sorted(clf.labels[i] for i in ids) for ids in ds["label"]]
    drawn = Noise("white").for_clips(waves, config.seed)
    for point in curve:  # exact match of the label sets above 0.5, recomputed here
        mixed = [mix_at_snr(w, n, point["snr_db"]) for w, n in zip(waves, drawn, strict=True)]
        sets = [
            sorted(clf.labels[i] for i in np.flatnonzero(p > 0.5)) for p in clf.probabilities(mixed)
        ]
        assert point["accuracy"] == np.mean([s == t for s, t in zip(sets, truth, strict=True)])
    chosen = [
        sorted(clf.labels[i] for i in np.flatnonzero(p > 0.5)) for p in clf.probabilities(waves)
    ]
    assert report == {
        **compute_multi_label_report(truth, chosen, clf.labels),
        "errors": sum(t != c for t, c in zip(truth, chosen, strict=True)),
    }
    lines = (out / "errors.csv").read_text().splitlines()
    assert lines[0] == "path,true_labels,predicted_labels,scores"
    assert len(lines) == 1 + report["errors"]
    assert not (out / "confusion.png").exists()
    markdown = (out / "report.md").read_text()
    assert "exact-match accuracy" in markdown and "confusion.png" not in markdown
