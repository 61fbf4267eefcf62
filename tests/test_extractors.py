"""The numpy feature extractors of exported models give transformers' features."""

import numpy as np
import pytest
from conftest import burst

from voxclass import extractors
from voxclass.audio import load_audio
from voxclass.features import extract_one, min_samples, pad_batch
from voxclass.model import label_maps
from voxclass.presets import preset_config


def saved_preset(name: str, path):
    config, extractor = preset_config(name)
    for key, value in label_maps(["a", "b", "c"]).items():
        setattr(config, key, value)
    config.save_pretrained(path)
    extractor.save_pretrained(path)
    return config, extractor


@pytest.mark.parametrize("preset", ["tiny", "tiny-fine", "small", "tiny-wav2vec2"])
def test_numpy_features_match_transformers(preset, fsdd, tmp_path):
    config, extractor = saved_preset(preset, tmp_path)
    rate = extractor.sampling_rate
    waves = [load_audio(p, rate) for p in sorted(fsdd.rglob("*.wav"))[:6]]
    waves += [burst(500.0, s, rate, seed=i) for i, s in enumerate((0.05, 0.31, 1.0, 2.7))]
    waves.append(np.zeros(rate // 10, np.float32))
    diff = extractors.save(extractor, tmp_path, waves)
    assert diff is not None and diff <= extractors.MAX_DIFF
    plain_config, ours = extractors.load(tmp_path)
    assert plain_config.id2label == {0: "a", 1: "b", 2: "c"} and plain_config.num_labels == 3
    assert plain_config.problem_type is None
    assert ours.model_input_names == extractor.model_input_names
    assert ours.return_attention_mask == bool(extractor.return_attention_mask)
    # The shortest input the model takes is the same rule on both (it probes the extractor).
    assert min_samples(ours, plain_config, rate) == min_samples(extractor, config, rate)
    features = [extract_one(extractor, w, rate) for w in waves]
    theirs = pad_batch(extractor, features, min_length=3, return_tensors="np")
    mine = pad_batch(ours, features, min_length=3, return_tensors="np")
    assert theirs.keys() == mine.keys()
    for key in theirs:
        assert np.array_equal(np.asarray(theirs[key]), mine[key], equal_nan=True), key


def test_an_extractor_numpy_does_not_match_is_left_to_transformers(tmp_path):
    _, extractor = saved_preset("tiny", tmp_path)
    assert extractors.load(tmp_path) is None  # not checked: an export made before the check
    waves = [burst(500.0, 1.0, extractor.sampling_rate)]

    class Shifted(type(extractor)):  # stands for a transformers that computes otherwise
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            out["input_features"] = out["input_features"] + 1.0
            return out

    diff = extractors.save(Shifted(**extractor.to_dict()), tmp_path, waves)
    assert diff is not None and diff > extractors.MAX_DIFF
    assert not (tmp_path / extractors.CHECKED_FILE).exists()
    assert extractors.load(tmp_path) is None
    assert extractors.save(extractor, tmp_path, waves) <= extractors.MAX_DIFF
    assert extractors.load(tmp_path) is not None
