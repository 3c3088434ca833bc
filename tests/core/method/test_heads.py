"""mergetune.core.method.heads and recover(method=linear_head): objective values by hand, step-0 parity, the WiSE-FT
sweep, ensembles, training, and the end-to-end head job on the built-in data with its shift domain."""

from __future__ import annotations

import math

import pytest
import torch

from mergetune.core.config import BackboneSpec, DatasetKind, HeadHyperparameters, Hyperparameters, Method
from mergetune.core.data import base_to_novel, open_dataset
from mergetune.core.errors import Cancelled, ConfigError
from mergetune.core.evaluation.heads import evaluate_split, model_log_probs, wise_ft_sweep
from mergetune.core.evaluation.result import RecoveryResult
from mergetune.core.method.heads import cosine_lr, fit_head, head_loss, head_path_loss
from mergetune.core.method.recovery import head_data, recover, train_head
from mergetune.core.model.backbone import load_backbone
from mergetune.core.model.heads import Head, head_from, interpolate

# fixed tensors: F = I (two unit features), y = [0, 1]
FEATS = torch.eye(2)
Y = torch.tensor([0, 1])
W = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
W_ZS = torch.eye(2)
W_FT = torch.tensor([[0.0, 0.0], [0.0, 1.0]])


def test_head_loss_hand_computed_no_bias() -> None:
    # CE: sample 0 logits [2, 0] -> log(1 + e^-2) = 0.126928; sample 1 logits [0, 1] -> log(1 + e^-1)
    #     = 0.313262; mean 0.220095.
    # |W - W_zs|_F^2 = (2 - 1)^2 = 1.
    # K = 1, t = 0.5: W_mid = 0.5 W_ft + 0.5 W = I -> both samples log(1 + e^-1) = 0.313262.
    # total = 0.220095 + 0.5 * 1 + 2 * 0.313262 = 1.346618.
    p = head_loss(
        FEATS, Y, W, None, zs=Head(W_ZS), lam=0.5, ft=Head(W_FT), w_lmc=2.0, num_samples=1, path_term=True
    )
    assert float(p.ce) == pytest.approx(0.220095, abs=1e-6)
    assert float(p.zs) == pytest.approx(1.0, abs=1e-7)
    assert float(p.lmc) == pytest.approx(0.313262, abs=1e-6)
    assert float(p.total) == pytest.approx(1.346618, abs=1e-5)
    # path_term off / zero weights drop the terms
    q = head_loss(FEATS, Y, W, None, zs=Head(W_ZS), lam=0.5, ft=Head(W_FT), w_lmc=2.0, path_term=False)
    assert float(q.total) == pytest.approx(0.220095 + 0.5, abs=1e-5) and float(q.lmc) == 0.0


def test_head_loss_hand_computed_with_bias_two_path_points() -> None:
    b, b_ft = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    # CE with b: logits [2, 1] -> log(1 + e^-1) = 0.313262; [0, 2] -> log(1 + e^-2) = 0.126928; mean 0.220095
    # K = 2, t = 0.25: W = [[.5, 0], [0, 1]], b = .75 b_ft + .25 b = [.75, .25]
    #   sample 0 logits [1.25, .25] -> log(1 + e^-1) = 0.313262; sample 1 [.75, 1.25] -> log(1 + e^-.5) = 0.474077
    # t = 0.75: W = [[1.5, 0], [0, 1]], b = [.25, .75]
    #   sample 0 [1.75, .75] -> 0.313262; sample 1 [.25, 1.75] -> log(1 + e^-1.5) = 0.201413
    # path = (0.313262 + 0.474077 + 0.313262 + 0.201413) / 4 = 0.325503
    p = head_loss(FEATS, Y, W, b, ft=Head(W_FT, b_ft), w_lmc=1.0, num_samples=2)
    assert float(p.ce) == pytest.approx(0.220095, abs=1e-6)
    assert float(p.lmc) == pytest.approx(0.325503, abs=1e-6)
    assert float(p.total) == pytest.approx(0.220095 + 0.325503, abs=1e-5)
    assert float(p.zs) == 0.0  # lam = 0: no surrogate


@pytest.mark.parametrize("k", [1, 5, 7])
def test_step0_parity_path_equals_ce(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    feats = torch.nn.functional.normalize(torch.randn(9, 6, generator=g), dim=-1)
    y = torch.randint(4, (9,), generator=g)
    w, b = 10 * torch.randn(4, 6, generator=g), torch.randn(4, generator=g)
    p = head_loss(feats, y, w, b, ft=Head(w.clone(), b.clone()), w_lmc=1.0, num_samples=k)
    assert float(p.lmc) == pytest.approx(float(p.ce), rel=1e-6)
    assert float(head_path_loss(feats, y, w, None, Head(w.clone()), [0.3])) == pytest.approx(
        float(torch.nn.functional.cross_entropy(feats @ w.t(), y)), rel=1e-6
    )


def test_head_from_and_interpolate() -> None:
    h = head_from({"weight": W, "bias": torch.tensor([1.0, 2.0])})
    assert h.bias is not None and h.weight.dtype == torch.float32
    assert head_from((W,)).bias is None and head_from(W).bias is None
    with pytest.raises(ConfigError):
        head_from({"weight": torch.zeros(3)})
    with pytest.raises(ConfigError):
        head_from({"weight": W, "bias": torch.zeros(3)})
    with pytest.raises(ConfigError):
        head_from(torch.tensor([[float("nan"), 0.0]]))
    mid = interpolate(Head(W_ZS), Head(W_FT, torch.tensor([2.0, 4.0])), 0.25)
    assert torch.allclose(mid.weight, torch.tensor([[0.75, 0.0], [0.0, 1.0]]))
    assert torch.allclose(mid.bias, torch.tensor([0.5, 1.0]))


def test_ensembles_and_split_metrics() -> None:
    # zero-shot head says class 0 for both samples, fine-tuned says class 1 strongly for both
    zs = Head(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    ft = Head(torch.tensor([[0.0, 0.0], [4.0, 4.0]]))
    lp = model_log_probs(FEATS, {"zero_shot": zs, "fine_tuned": ft, "merged": zs})
    p = (torch.softmax(FEATS @ zs.weight.t(), -1) + torch.softmax(FEATS @ ft.weight.t(), -1)) / 2
    assert torch.allclose(lp["endpoint_ensemble"].exp(), p, atol=1e-6)
    assert torch.allclose(lp["merged_zs_ensemble"].exp(), torch.softmax(FEATS @ zs.weight.t(), -1), atol=1e-6)
    s = evaluate_split("t", "shift", (FEATS, Y), {"zero_shot": zs, "fine_tuned": ft, "merged": zs})
    assert s.accuracy["zero_shot"] == 50.0 and s.accuracy["fine_tuned"] == 50.0
    assert s.accuracy["endpoint_ensemble"] == 50.0  # ft dominates: both predicted 1
    # loss of the zero-shot head: sample 0 logits [1, 0] -> log(1 + e^-1); sample 1 [1, 0] -> log(1 + e^1)
    assert s.loss["zero_shot"] == pytest.approx((math.log1p(math.e**-1) + math.log1p(math.e)) / 2, abs=1e-6)
    assert s.images == 2 and s.classes == 2


def test_wise_ft_sweep_endpoints_and_selection() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(40, 5, generator=g), dim=-1)
    y = torch.randint(3, (40,), generator=g)
    zs, ft = (
        Head(5 * torch.randn(3, 5, generator=g)),
        Head(5 * torch.randn(3, 5, generator=g), torch.randn(3)),
    )
    splits = {"val": (feats[:20], y[:20]), "test": (feats[20:], y[20:])}
    sw = wise_ft_sweep(splits, zs, ft, step=0.25)
    assert sw.alphas == [0.0, 0.25, 0.5, 0.75, 1.0] and sw.selected_on == "val"
    for name, (f, lab) in splits.items():
        ends = evaluate_split(name, "x", (f, lab), {"zero_shot": zs, "fine_tuned": ft})
        assert sw.accuracy[name][0] == ends.accuracy["zero_shot"]
        assert sw.accuracy[name][-1] == ends.accuracy["fine_tuned"]
        assert sw.loss[name][0] == pytest.approx(ends.loss["zero_shot"], rel=1e-5)
        assert sw.loss[name][-1] == pytest.approx(ends.loss["fine_tuned"], rel=1e-5)
    i = sw.alphas.index(sw.best_alpha)
    assert sw.accuracy["val"][i] == max(sw.accuracy["val"])
    with pytest.raises(ValueError):
        wise_ft_sweep({"test": splits["test"]}, zs, ft)


class _Batches:
    def __init__(self, feats: torch.Tensor, y: torch.Tensor) -> None:
        self.feats, self.y, self.steps_per_epoch = feats, y, 2

    def epoch(self, epoch: int):
        yield self.feats[:10], self.y[:10]
        yield self.feats[10:], self.y[10:]


def test_fit_head_lowers_loss_resumes_and_cancels() -> None:
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(3, 8, generator=g)
    y = torch.arange(20) % 3
    feats = torch.nn.functional.normalize(centres[y] + 0.5 * torch.randn(20, 8, generator=g), dim=-1)
    hp = HeadHyperparameters(epochs=6, lr=1.0, momentum=0.9)
    init = Head(torch.zeros(3, 8), torch.zeros(3))
    head, hist = fit_head(_Batches(feats, y), init, hp)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert hist[0]["lr"] == 1.0 and hist[1]["lr"] == pytest.approx(cosine_lr(1.0, 1, 6))
    states = []
    fit_head(_Batches(feats, y), init, hp.model_copy(update={"epochs": 6}), on_epoch_end=states.append)
    resumed, hist2 = fit_head(_Batches(feats, y), init, hp, resume_state=states[2])
    assert torch.equal(resumed.weight, head.weight) and torch.equal(resumed.bias, head.bias)
    assert [h["loss"] for h in hist2] == [h["loss"] for h in hist]
    with pytest.raises(Cancelled):
        fit_head(_Batches(feats, y), init, hp, should_stop=lambda: True)


# ----------------------------------------------------------------------------------------------------
# end to end on the built-in data (tiny random backbone: numbers are plumbing, not quality)

OPTS = {"num_classes": 6, "train_per_class": 4, "val_per_class": 2, "test_per_class": 3}


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:4"))


@pytest.fixture(scope="module")
def task():
    return base_to_novel(open_dataset(DatasetKind.builtin, None, "", options=OPTS), shots=4, seed=1)


HHP = HeadHyperparameters(epochs=3, lr=1.0, batch_size=8, shots=4, lam=0.01, curve_step=0.25)


@pytest.fixture(scope="module")
def head_ft(backbone, task):
    return train_head(backbone, task, HHP)


def test_train_head_and_head_data(backbone, task, head_ft) -> None:
    assert head_ft["weight"].shape == (6, backbone.embed_dim) and head_ft["bias"].shape == (6,)
    data = head_data(task, 6, HHP)
    assert data.setting == "all_classes" and len(data.train) == 24 and len(data.val) == 12
    assert {r.label for r in data.train} == set(range(6))
    base = head_data(task, 3, HHP)
    assert base.setting == "base_classes" and base.rows == [0, 1, 2]
    with pytest.raises(ConfigError) as e:
        head_data(task, 5, HHP)
    assert e.value.code == "class_mismatch"
    zeros = train_head(backbone, task, HHP.model_copy(update={"epochs": 1}), init="zeros", bias=False)
    assert "bias" not in zeros


def test_recover_linear_head_end_to_end(backbone, task, head_ft) -> None:
    progress = []
    out = recover(
        backbone,
        task,
        head_ft,
        HHP,
        method=Method.linear_head,
        on_progress=lambda *a, **k: progress.append(a),
    )
    assert set(out.ctx) == {"weight", "bias"} and out.ctx["weight"].shape == head_ft["weight"].shape
    assert not torch.equal(out.ctx["weight"], head_ft["weight"])
    r = out.result
    assert len(progress) == 3 * 3 and len(r.training) == 3  # 24 images, batch 8
    head = r.head
    assert head is not None and head.classes == 6 and head.bias
    # validation accuracy after every epoch; the last one is the merged head's on the val split
    assert all(t.val_acc is not None for t in r.training)
    assert r.training[-1].val_acc == pytest.approx(head.splits[0].accuracy["merged"])
    names = [s.name for s in head.splits]
    assert names == ["val", "test", "builtin-shift"]
    assert [s.kind for s in head.splits] == ["validation", "in_distribution", "shift"]
    test, shift = head.splits[1], head.splits[2]
    assert test.images == 18 and shift.images == 18 and shift.classes == 6
    models = {"zero_shot", "fine_tuned", "merged", "merged_zs_ensemble", "endpoint_ensemble", "wise_ft"}
    assert set(test.accuracy) == models and set(shift.accuracy) == models
    sw = head.wise_ft
    assert sw.accuracy["test"][0] == test.accuracy["zero_shot"]
    assert sw.accuracy["test"][-1] == test.accuracy["fine_tuned"]
    assert sw.accuracy["test"][sw.alphas.index(sw.best_alpha)] == test.accuracy["wise_ft"]
    assert set(sw.accuracy) == {"val", "test", "builtin-shift"}  # the sweep covers every shifted split
    assert sw.accuracy["builtin-shift"][0] == shift.accuracy["zero_shot"]
    assert sw.accuracy["builtin-shift"][-1] == shift.accuracy["fine_tuned"]
    assert sw.accuracy["builtin-shift"][sw.alphas.index(sw.best_alpha)] == shift.accuracy["wise_ft"]
    # the extra evaluation row repeats the shift split's numbers
    (ev,) = r.extra_evaluations
    assert ev["dataset"] == "builtin-shift" and ev["kind"] == "shift" and ev["mapping"] == "same"
    assert ev["recovered"] == shift.accuracy["merged"] and ev["zero_shot"] == shift.accuracy["zero_shot"]
    # prompt-job shape: base / novel among 3 classes each; WiSE-FT as feature_interpolation
    assert r.baselines.feature_interpolation.alpha == sw.best_alpha
    assert set(r.curves["classifier"]) == {"zs_ft", "zs_rec", "ft_rec"}
    c = r.curves["classifier"]["zs_ft"]
    assert c.base_acc[0] == r.metrics.zero_shot.base and c.base_acc[-1] == r.metrics.fine_tuned.base
    assert c.novel_acc[-1] == r.metrics.fine_tuned.novel
    assert r.config["method"] == "linear_head" and r.config["setting"] == "all_classes"
    RecoveryResult.model_validate(r.model_dump(mode="json"))  # report.json round trip
    # no extra datasets when asked for none; resume reproduces the uninterrupted head
    states = []
    again = recover(
        backbone, task, head_ft, HHP, method=Method.linear_head, extra_datasets=[], on_epoch_end=states.append
    )
    assert again.result.extra_evaluations == [] and len(again.result.head.splits) == 2
    assert torch.equal(again.ctx["weight"], out.ctx["weight"])
    resumed = recover(
        backbone, task, head_ft, HHP, method=Method.linear_head, extra_datasets=[], resume_state=states[1]
    )
    assert torch.equal(resumed.ctx["weight"], out.ctx["weight"])
    assert torch.equal(resumed.ctx["bias"], out.ctx["bias"])


def test_recover_linear_head_base_classes_and_errors(backbone, task) -> None:
    hp = HHP.model_copy(update={"epochs": 1})
    w = torch.randn(3, backbone.embed_dim)  # a head over the 3 base classes, no bias
    out = recover(backbone, task, {"weight": w}, hp, method=Method.linear_head, extra_datasets=[])
    assert set(out.ctx) == {"weight"}
    r = out.result
    assert r.config["setting"] == "base_classes" and r.head.splits[1].classes == 3
    # novel classes have no head rows: every model classifies them with the zero-shot rows
    assert r.metrics.fine_tuned.novel == r.metrics.zero_shot.novel == r.metrics.recovered.novel
    with pytest.raises(ConfigError) as e:
        recover(backbone, task, {"weight": torch.randn(6, 7)}, hp, method=Method.linear_head)
    assert e.value.code == "width_mismatch"
    with pytest.raises(ConfigError):
        recover(backbone, task, {"weight": w}, Hyperparameters(), method=Method.linear_head)
    with pytest.raises(ConfigError):  # an extra dataset may not shadow the val / test splits
        recover(
            backbone,
            task,
            {"weight": w},
            hp,
            method=Method.linear_head,
            extra_datasets=[("val", task.dataset)],
        )
