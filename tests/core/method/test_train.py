"""mergetune.core.method.train + mergetune.core.model.features: batching, feature modes, determinism, resume, cancellation, loss goes down."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from core_fakes import FakeImages, Rec

from mergetune.core.config import BackboneSpec, FeatureMode, Hyperparameters, PromptLearnerSpec
from mergetune.core.errors import Cancelled
from mergetune.core.method.objectives import LossWeights
from mergetune.core.method.train import train_prompts
from mergetune.core.model.backbone import load_backbone
from mergetune.core.model.features import TrainFeatures, _mix, augment, batch_plan, encode_records
from mergetune.core.model.prompts import PromptLearner, encode_template


def records(n_cls: int, per_class: int) -> list[Rec]:
    return [Rec(f"{c}/{i}", c) for c in range(n_cls) for i in range(per_class)]


NAMES = ["red square", "blue circle", "green star"]


@pytest.fixture(scope="module")
def bb():
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:5"))


def test_batch_plan_follows_dassl():
    assert batch_plan(80, 128) == (1, False)  # whole set smaller than a batch: one batch of 80
    assert batch_plan(200, 128) == (1, True)  # drop_last: the 72 left over are dropped this epoch
    assert batch_plan(256, 128) == (2, True)
    assert batch_plan(0, 4) == (0, False)


def test_small_set_is_one_batch(bb):
    src = FakeImages()
    tf = TrainFeatures(bb, src, records(3, 4), mode=FeatureMode.none, batch_size=128, seed=1)
    batches = list(tf.epoch(0))
    assert len(batches) == 1 and batches[0][0].shape == (12, 32)
    assert sorted(batches[0][1].tolist()) == sorted([r.label for r in records(3, 4)])


def test_none_mode_features_are_test_transform_and_encoded_once(bb, monkeypatch):
    src = FakeImages()
    recs = records(3, 4)
    tf = TrainFeatures(bb, src, recs, mode=FeatureMode.none, batch_size=5, seed=1)
    calls = []
    monkeypatch.setattr(bb, "encode_images", lambda x: calls.append(x) or torch.zeros(len(x), 32))
    for e in range(3):
        for feats, _ in tf.epoch(e):
            assert feats.shape == (5, 32)
    assert calls == []  # no image pass during training
    monkeypatch.undo()
    assert torch.allclose(tf.feats, encode_records(bb, src, recs))


def test_bank_views_are_seeded_augmentations(bb):
    src = FakeImages()
    recs = records(2, 3)
    tf = TrainFeatures(bb, src, recs, mode=FeatureMode.bank, batch_size=6, seed=7, views=3)
    assert tf.feats.shape == (3, 6, 32) and tf.feats.dtype == torch.float16  # stored in fp16
    # view v of image i is the dataset's train transform seeded with (seed, 1, v, i)
    pix = augment(bb, src.load_image(recs[4].key), _mix(7, 1, 2, 4), tf.transform)
    assert torch.allclose(tf.feats[2, 4].float(), bb.encode_images(pix[None])[0], atol=2e-3)
    assert not torch.allclose(tf.feats[0, 4], tf.feats[1, 4])
    # each epoch picks one view per image; the same epoch gives the same batches
    a = [f for f, _ in tf.epoch(3)]
    b = [f for f, _ in tf.epoch(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].dtype == torch.float32
    rows = torch.cat(a)
    for row in rows:  # every row is one of the bank's views
        assert ((tf.feats.view(-1, 32).float() - row).abs().sum(-1) < 1e-6).any()


def test_bank_of_as_many_views_as_epochs_gives_every_epoch_its_own_view(bb):
    src = FakeImages()
    recs = records(2, 3)
    tf = TrainFeatures(bb, src, recs, mode=FeatureMode.bank, batch_size=6, seed=7, views=3)
    flat = tf.feats.float()
    seen: dict[int, set[int]] = {i: set() for i in range(len(recs))}
    for epoch in range(3):
        feats, _ = next(iter(tf.epoch(epoch)))
        order = tf._order(epoch)
        for row, i in zip(feats, order.tolist(), strict=True):
            v = int((flat[:, i] - row).abs().sum(-1).argmin())
            assert (flat[v, i] - row).abs().max() < 1e-6
            seen[i].add(v)
    # 3 epochs over 3 views: every image saw 3 different views (the reference's fresh view per epoch)
    assert all(len(v) == 3 for v in seen.values())


def test_exact_mode_runs_the_image_encoder_once_per_batch(bb, monkeypatch):
    src = FakeImages()
    tf = TrainFeatures(bb, src, records(3, 4), mode=FeatureMode.exact, batch_size=4, seed=1)
    assert tf.feats is None
    real = bb.encode_images
    calls = []

    def spy(x):
        calls.append(x.shape[0])
        return real(x)

    monkeypatch.setattr(bb, "encode_images", spy)
    out1 = [f for f, _ in tf.epoch(0)]
    assert calls == [4, 4, 4]
    out2 = [f for f, _ in tf.epoch(0)]
    assert all(torch.equal(x, y) for x, y in zip(out1, out2, strict=True))  # seeded augmentation
    out3 = [f for f, _ in tf.epoch(1)]
    assert not torch.allclose(torch.cat(out1), torch.cat(out3))  # fresh augmentation each epoch


def _run(
    bb,
    mode,
    epochs,
    *,
    resume_state=None,
    on_epoch_end=None,
    on_progress=None,
    should_stop=None,
    hp=None,
    weights=None,
):
    hp = hp or Hyperparameters(epochs=epochs, batch_size=4, lr=0.01, feature_mode=mode, bank_views=2, seed=3)
    src = FakeImages()
    ctx_ft = PromptLearner(bb, NAMES, None, PromptLearnerSpec()).ctx.detach()
    learner = PromptLearner(bb, NAMES, ctx_ft, PromptLearnerSpec())
    with torch.no_grad():
        g_ft = learner.text_features()
    batches = TrainFeatures(
        bb, src, records(3, 4), mode=mode, batch_size=hp.batch_size, seed=hp.seed, views=2
    )
    hist = train_prompts(
        learner, batches, hp, weights or LossWeights.mergetune(hp), tau=bb.logit_scale,
        anchor=encode_template(bb, NAMES, "a photo of a {}."), ft_feats=g_ft, resume_state=resume_state,
        on_epoch_end=on_epoch_end, on_progress=on_progress, should_stop=should_stop,
    )  # fmt: skip
    return learner.ctx.detach().clone(), hist


@pytest.mark.parametrize("mode", [FeatureMode.bank, FeatureMode.exact])
def test_resume_equals_uninterrupted(bb, mode, tmp_path):
    states = {}
    full_ctx, full_hist = _run(bb, mode, 4, on_epoch_end=lambda s: states.__setitem__(s["epoch"], s))
    assert sorted(states) == [1, 2, 3, 4]
    path = tmp_path / "state.pt"
    torch.save(states[2], path)
    state = torch.load(path, weights_only=True)  # tensors and plain types only
    torch.manual_seed(12345)  # a different global RNG state must not matter
    resumed_ctx, resumed_hist = _run(bb, mode, 4, resume_state=state)
    assert torch.equal(resumed_ctx, full_ctx)
    assert resumed_hist == full_hist
    assert [h["epoch"] for h in resumed_hist] == [0, 1, 2, 3]


def test_seeded_runs_are_identical_and_progress_reported(bb):
    seen = []
    a, hist = _run(
        bb, FeatureMode.bank, 2, on_progress=lambda e, s, loss, **info: seen.append((e, s, loss, info))
    )
    b, _ = _run(bb, FeatureMode.bank, 2)
    assert torch.equal(a, b)
    assert [(e, s) for e, s, _, _ in seen] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    info = seen[-1][3]
    assert info["epochs"] == 2 and info["steps"] == 3
    assert set(info) >= {"ce", "zs", "lmc", "lr"}
    assert seen[0][3]["lr"] == 1e-5 and info["lr"] == 0.01
    assert hist[0]["loss"] == pytest.approx(np.mean([x[2] for x in seen[:3]]))


def test_should_stop_cancels(bb):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        _run(bb, FeatureMode.none, 3, should_stop=stop)
    assert len(calls) == 3


@pytest.mark.parametrize("objective", ["coop", "mergetune"])
def test_a_few_steps_lower_the_loss(bb, objective):
    lr = 0.5 if objective == "coop" else 0.004
    hp = Hyperparameters(
        epochs=10, batch_size=128, lr=lr, warmup_epochs=0, feature_mode=FeatureMode.none, seed=3
    )
    weights = LossWeights.coop() if objective == "coop" else LossWeights.mergetune(hp)
    _, hist = _run(bb, FeatureMode.none, 10, hp=hp, weights=weights)
    # full batch (12 images < batch size): every epoch's loss is on the same data
    losses = [h["loss"] for h in hist]
    assert losses[-1] < losses[0] - 0.02


def test_one_text_pass_per_step(bb):
    hp = Hyperparameters(epochs=2, batch_size=4, feature_mode=FeatureMode.none, seed=3)
    learner = PromptLearner(bb, NAMES, None, PromptLearnerSpec())
    with torch.no_grad():
        g_ft = learner.text_features()
    batches = TrainFeatures(bb, FakeImages(), records(3, 4), mode=hp.feature_mode, batch_size=4, seed=3)
    real = learner.text_features
    calls = []
    learner.text_features = lambda *a, **k: calls.append(1) or real(*a, **k)
    anchor = encode_template(bb, NAMES, "a photo of a {}.")
    train_prompts(
        learner, batches, hp, LossWeights.mergetune(hp), tau=bb.logit_scale, anchor=anchor, ft_feats=g_ft
    )
    assert len(calls) == hp.epochs * batches.steps_per_epoch == 6


class _NaNAfter:
    """A batch source whose features turn NaN from ``bad_epoch`` on (as an overflowing encoder would)."""

    def __init__(self, inner, bad_epoch):
        self.inner, self.bad_epoch = inner, bad_epoch
        self.steps_per_epoch = inner.steps_per_epoch

    def epoch(self, epoch):
        for feats, labels in self.inner.epoch(epoch):
            yield (feats * float("nan") if epoch >= self.bad_epoch else feats), labels


def test_a_non_finite_loss_fails_with_its_own_code(bb):
    from mergetune.core.errors import NonFiniteLoss

    hp = Hyperparameters(epochs=3, batch_size=4, lr=0.01, feature_mode=FeatureMode.none, seed=3)
    learner = PromptLearner(bb, NAMES, None, PromptLearnerSpec())
    inner = TrainFeatures(bb, FakeImages(), records(3, 4), mode=FeatureMode.none, batch_size=4, seed=3)
    with pytest.raises(NonFiniteLoss) as err:
        train_prompts(learner, _NaNAfter(inner, 1), hp, LossWeights.coop(), tau=bb.logit_scale)
    assert err.value.code == "non_finite_loss" and err.value.user_error
    assert "epoch 2 step 1" in err.value.message and "lower lr" in err.value.message


def test_validation_accuracy_is_recorded_every_epoch(bb):
    from mergetune.core.method.train import val_accuracy

    hp = Hyperparameters(epochs=3, batch_size=4, lr=0.01, feature_mode=FeatureMode.none, seed=3)
    learner = PromptLearner(bb, NAMES, None, PromptLearnerSpec())
    src, recs = FakeImages(), records(3, 4)
    batches = TrainFeatures(bb, src, recs, mode=FeatureMode.none, batch_size=4, seed=3)
    val_recs = records(3, 2)
    val = (encode_records(bb, src, val_recs), torch.tensor([r.label for r in val_recs]))
    hist = train_prompts(learner, batches, hp, LossWeights.coop(), tau=bb.logit_scale, val=val)
    accs = [h["val_acc"] for h in hist]
    assert len(accs) == 3 and all(0.0 <= a <= 100.0 for a in accs)
    # 6 validation images: every value is a multiple of 100/6
    assert all(abs(a * 6 / 100 - round(a * 6 / 100)) < 1e-6 for a in accs)
    # the last entry is the accuracy of the final prompts, recomputed by hand
    with torch.no_grad():
        text = torch.nn.functional.normalize(learner.text_features().float(), dim=-1)
        pred = (val[0] @ text.T).argmax(-1)
    assert accs[-1] == pytest.approx(float((pred == val[1]).float().mean()) * 100)
    assert val_accuracy(learner, (val[0][:0], val[1][:0]), bb.logit_scale) is None
    # without a validation split there is no entry
    learner2 = PromptLearner(bb, NAMES, None, PromptLearnerSpec())
    assert "val_acc" not in train_prompts(learner2, batches, hp, LossWeights.coop(), tau=bb.logit_scale)[0]
