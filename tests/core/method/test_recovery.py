"""mergetune.core.method.recovery: train_coop and recover end to end on a tiny fake task; the result schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from core_fakes import FakeTask

from mergetune.core.config import BackboneSpec, FeatureMode, Hyperparameters, Method, PromptLearnerSpec
from mergetune.core.errors import Cancelled, ConfigError
from mergetune.core.evaluation.result import RecoveryResult
from mergetune.core.method.recovery import RecoveryOutput, recover, train_coop
from mergetune.core.model.backbone import load_backbone

HP = Hyperparameters(epochs=3, batch_size=4, lr=0.01, bank_views=2, curve_step=0.25, seed=2)


@pytest.fixture(scope="module")
def bb():
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:4"))


@pytest.fixture(scope="module")
def ctx_ft(bb):
    return train_coop(bb, FakeTask(), HP.model_copy(update={"lr": 0.2}))


@pytest.fixture(scope="module")
def output(bb, ctx_ft):
    return recover(bb, FakeTask(), ctx_ft, HP)


def test_train_coop_moves_the_context(bb, ctx_ft):
    assert ctx_ft.shape == (4, 64) and ctx_ft.device.type == "cpu"
    from mergetune.core.model.prompts import init_ctx

    assert not torch.allclose(ctx_ft, init_ctx(bb, PromptLearnerSpec()))
    kg = train_coop(bb, FakeTask(), HP, method=Method.kgcoop)
    assert kg.shape == (4, 64)
    csc = train_coop(bb, FakeTask(), HP.model_copy(update={"epochs": 1}), PromptLearnerSpec(csc=True))
    assert csc.shape == (3, 4, 64)


def test_recover_output_and_result(output, ctx_ft):
    assert isinstance(output, RecoveryOutput)
    assert output.ctx.shape == ctx_ft.shape
    assert not torch.equal(output.ctx, ctx_ft)
    r = output.result
    for m in (r.metrics.zero_shot, r.metrics.fine_tuned, r.metrics.recovered):
        assert 0 <= m.base <= 100 and 0 <= m.novel <= 100 and m.hm <= max(m.base, m.novel) + 1e-9
    assert [e.epoch for e in r.training] == [0, 1, 2]
    assert r.training[0].lr == pytest.approx(1e-5) and r.training[1].lr == pytest.approx(0.01)
    assert r.training[0].lmc > 0 and r.training[0].zs > 0
    assert set(r.curves) == {"classifier", "prompt"}
    assert all(set(v) == {"zs_ft", "zs_rec", "ft_rec"} for v in r.curves.values())
    assert r.curves["classifier"]["ft_rec"].alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert {"training", "train_features", "evaluation", "total"} <= set(r.timings)
    assert r.config["hyperparameters"]["epochs"] == 3
    assert r.config["backbone"] == {"model": "tiny-test", "pretrained": "random:4", "identity": "random:4"}
    assert r.config["classes"]["novel"] == ["yellow heart", "purple moon"]
    assert r.config["steps_per_epoch"] == 3 and r.config["amp"] is False
    assert r.extra_evaluations == []


def test_result_serialises_to_json_and_back(output):
    dumped = output.result.model_dump(mode="json")
    text = json.dumps(dumped)
    again = RecoveryResult.model_validate(json.loads(text))
    assert again == output.result
    assert set(dumped) == {
        "metrics",
        "baselines",
        "curves",
        "training",
        "timings",
        "config",
        "extra_evaluations",
        "verdict",
    }
    assert set(dumped["baselines"]) == {"feature_interpolation", "ensemble"}
    assert set(dumped["curves"]["prompt"]["zs_ft"]) == {
        "alphas", "base_acc", "novel_acc", "base_loss", "novel_loss", "barrier_base", "barrier_novel"
    }  # fmt: skip


def test_result_module_does_not_import_torch():
    code = "import sys, mergetune.core.evaluation.result; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2])
    )


def test_recover_is_deterministic_and_resumable(bb, ctx_ft, output, tmp_path):
    states = []
    again = recover(bb, FakeTask(), ctx_ft, HP, on_epoch_end=states.append)
    assert torch.equal(again.ctx, output.ctx)
    assert again.result.metrics == output.result.metrics
    torch.save(states[0], tmp_path / "s.pt")
    resumed = recover(
        bb, FakeTask(), ctx_ft, HP, resume_state=torch.load(tmp_path / "s.pt", weights_only=True)
    )
    assert torch.equal(resumed.ctx, output.ctx)
    assert resumed.result.training == output.result.training


def test_recover_modes_and_path_switch(bb, ctx_ft):
    for mode in (FeatureMode.none, FeatureMode.exact):
        out = recover(bb, FakeTask(), ctx_ft, HP.model_copy(update={"feature_mode": mode, "epochs": 2}))
        assert out.result.config["hyperparameters"]["feature_mode"] == mode.value
    out = recover(bb, FakeTask(), ctx_ft, HP.model_copy(update={"path_term": False, "epochs": 2}))
    assert all(e.lmc == 0.0 for e in out.result.training)


def test_recover_cancels(bb, ctx_ft):
    with pytest.raises(Cancelled):
        recover(bb, FakeTask(), ctx_ft, HP, should_stop=lambda: True)


def test_recover_rejects_bad_inputs(bb, ctx_ft):
    with pytest.raises(ConfigError) as e:
        recover(bb, FakeTask(), torch.zeros(4, 512), HP)
    assert e.value.param == "ctx"
    with pytest.raises(ConfigError) as e:
        recover(bb, FakeTask(base_classnames=[]), ctx_ft, HP)
    assert e.value.param == "classnames"
    with pytest.raises(ConfigError) as e:
        recover(bb, FakeTask(), ctx_ft, HP, method=Method.linear_head)
    assert e.value.param == "method"
    with pytest.raises(ConfigError):
        recover(bb, FakeTask(), torch.full((4, 64), float("nan")), HP)
    with pytest.raises(ConfigError) as e:
        recover(bb, FakeTask(), ctx_ft, HP, spec=PromptLearnerSpec(csc=True))
    assert e.value.param == "prompt.csc"


def test_recover_does_not_modify_its_input(bb, ctx_ft):
    before = ctx_ft.clone()
    out = recover(bb, FakeTask(), ctx_ft, HP.model_copy(update={"epochs": 2}))
    assert torch.equal(ctx_ft, before)
    assert not torch.equal(out.ctx, before)
