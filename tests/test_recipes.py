"""Every recipe in recipes/ is a valid `voxclass train --config` file, checked offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voxclass.config import build_config
from voxclass.train import TrainConfig

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def test_the_seed_job_and_its_relatives_are_there():
    names = {p.stem for p in RECIPES}
    assert "minds14-wav2vec2-base" in names and len(names) >= 6


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_a_train_config_with_hub_ids(recipe):
    config = build_config(TrainConfig, recipe, {})  # unknown keys and bad types are errors
    assert HUB_ID.fullmatch(config.model), config.model
    assert HUB_ID.fullmatch(config.source), config.source
    assert config.hub_config and config.label_column != "audio"
    assert config.output == f"runs/{recipe.stem}"
    text = recipe.read_text()
    # a recipe says what to expect (or that nothing is published) and that it was not run here
    assert "Expected figure:" in text and "Not run here" in text
    assert f"voxclass train --config recipes/{recipe.name}" in text
