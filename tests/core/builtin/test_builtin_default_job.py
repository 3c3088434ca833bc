"""A user who submits the defaults on the built-in data gets a recovered model better than the
fine-tuned one they brought (the demo's setting: tiny-clip weights, downstream domain, 48 base
classes x 16 shots, CoOp start of 100 epochs)."""

from __future__ import annotations

import pytest

from mergetune.core.config import BackboneSpec, DatasetKind, FeatureMode, Hyperparameters
from mergetune.core.data import base_to_novel, open_dataset
from mergetune.core.method.recovery import recover, train_coop
from mergetune.core.model.backbone import load_backbone


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~90 s on the quiet 2-core box (CoOp start ~20 s, 100 exact epochs ~65 s)
def test_default_hyperparameters_raise_hm_over_the_fine_tuned_input(tmp_path):
    backbone = load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"))
    dataset = open_dataset(DatasetKind.builtin, tmp_path, "", options={"domain": "downstream"})
    task = base_to_novel(dataset, shots=16, seed=1)
    # the fine-tuned input, made as the demo makes it (CoOp, 100 epochs on un-augmented images)
    ctx_ft = train_coop(backbone, task, Hyperparameters(seed=1, feature_mode=FeatureMode.none))

    hp = Hyperparameters()  # what POST /v1/jobs and the dashboard form resolve an empty request to
    assert hp.feature_mode == FeatureMode.exact and hp.epochs == 100
    result = recover(backbone, task, ctx_ft, hp).result

    m = result.metrics
    assert m.recovered.hm > m.fine_tuned.hm + 1.0, m
    assert m.recovered.hm > m.zero_shot.hm, m
    assert result.verdict is not None
    assert not {w.code for w in result.verdict.warnings} & {"below_fine_tuned", "below_zero_shot"}
    assert result.config["train_transform"]["name"] == "small_image_flip"
    assert result.config["feature_mode"] == "exact"
    assert all(r.val_acc is not None for r in result.training)  # the built-in set has a val split
