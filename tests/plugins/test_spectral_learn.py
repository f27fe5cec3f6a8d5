"""The fusion learned on synthetic scenes: what learn.py writes and what ships."""

from __future__ import annotations

import json

import numpy as np

from solardesk_spectral import learn
from solardesk_spectral.analyser import FUSION_FILE, INSTANCE_FEATURES, Fusion


def _signs(weights) -> dict[str, int]:
    return {f: int(np.sign(w)) for f, w in zip(INSTANCE_FEATURES, weights, strict=True) if w}


def test_the_shipped_fusion_uses_the_declared_cues() -> None:
    """fusion.json is relearned whenever the cues change: a stale file fails here."""
    data = json.loads(FUSION_FILE.read_text(encoding="utf-8"))
    fusion = Fusion.from_json(data)
    assert _signs(fusion.instance_weights) == learn.CONFIDENCE_CUES
    assert np.all(np.abs(fusion.instance_weights[fusion.instance_weights != 0]) == 1.0)
    assert fusion.instance_bias == 0.0
    assert np.all(fusion.instance_std > 0)
    assert data["meta"]["learned_on"].startswith("synthetic")
    assert data["meta"]["confidence_cues"] == learn.CONFIDENCE_CUES


def test_learning_on_a_few_scenes_gives_a_usable_fusion() -> None:
    fusion = learn.learn(n_scenes=2, holdout=1, seed=3, log=lambda _msg: None)
    assert _signs(fusion.instance_weights) == learn.CONFIDENCE_CUES
    assert np.isfinite(fusion.pixel_weights).all() and np.isfinite(fusion.instance_mean).all()
    holdout = fusion.meta["holdout"]
    # The pixel model separates panel pixels from the rest on scenes it never saw.
    assert holdout["pixel_auc_holdout"] > 0.9
    assert 0.5 < holdout["instance_auc_holdout"] <= 1.0
    assert Fusion.from_json(json.loads(json.dumps(fusion.to_json()))).meta == fusion.meta
