"""The MMA + MergeTune objective, training loop and recovery (mergetune.core.method.mma; ALGORITHM.md section 6c).

The adapters and the adapted towers are tested in tests/core/model/test_adapters.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mergetune.core.config import BackboneSpec, MMAHyperparameters
from mergetune.core.method.mma import PrefixBatches, mma_loss, recover_mma, reference_step_loss, train_mma
from mergetune.core.model.adapters import MMAAdapters, MMAModel, backbone_widths, layout_for
from mergetune.core.model.backbone import load_backbone
from tests.core.core_fakes import FakeTask


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"))


def _adapters(backbone, layout, seed=0):
    w = backbone_widths(backbone)
    return MMAAdapters(layout, w["text_layers"], w["visual_layers"], seed=seed)


def test_loss_by_hand():
    """F = I, G_w = 2 I (unnormalised), G_zs = swapped unit rows, tau = 1, K = 1 (t = 0.5).

    CE = log(1 + e^-1) = 0.313262; the path classifier of class 0 is n(0.5 [2, 0] + 0.5 [0, 1]) =
    n([1, 0.5]) = [0.894427, 0.447214], so its CE is log(1 + e^-(0.894427 - 0.447214)) = 0.494340.
    With a normalised G_w the mix would be [0.5, 0.5] for both classes: CE log 2 (the scale quirk)."""
    f = torch.eye(2)
    y = torch.tensor([0, 1])
    gw = 2 * torch.eye(2)
    gzs = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    parts = mma_loss(f, y, gw, 1.0, anchor=gzs, w_lmc=10.0, num_samples=1)
    ce = math.log1p(math.exp(-1.0))
    lmc = math.log1p(math.exp(-(2 / math.sqrt(5) - 1 / math.sqrt(5))))
    assert parts.ce.item() == pytest.approx(ce, abs=1e-6)
    assert parts.lmc.item() == pytest.approx(lmc, abs=1e-6)
    assert parts.total.item() == pytest.approx(ce + 10 * lmc, abs=1e-5)
    normalised = mma_loss(f, y, F.normalize(gw, dim=-1), 1.0, anchor=gzs, w_lmc=1.0, num_samples=1)
    assert normalised.lmc.item() == pytest.approx(math.log(2), abs=1e-6)
    # K = 5 uses t = 0.1, 0.3, ..., 0.9 (the reference's np.arange(0.1, 1.01, 0.2))
    five = mma_loss(f, y, gw, 1.0, anchor=gzs, w_lmc=1.0, num_samples=5)
    ts = [0.1, 0.3, 0.5, 0.7, 0.9]
    by_hand = 0.0
    for t in ts:
        row = F.normalize(torch.tensor([2 * (1 - t), t]), dim=0)
        by_hand += math.log1p(math.exp(-(row[0] - row[1]).item())) / 5
    assert five.lmc.item() == pytest.approx(by_hand, abs=1e-6)


def test_fast_step_equals_reference_step(tiny):
    """Cached lower blocks + one pass over blocks start.. give the reference's loss and gradients
    (1 + K whole image passes, two whole text passes)."""
    lay = layout_for(tiny)
    names = ["red circle", "blue square", "green star"]
    mma = MMAModel(tiny, names, lay)
    ad = _adapters(tiny, lay, seed=2)
    pix = torch.randn(4, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2, 0])
    anchor = F.normalize(torch.randn(3, tiny.embed_dim, generator=torch.Generator().manual_seed(5)), dim=-1)
    ref = reference_step_loss(mma, ad, pix, y, anchor, w_lmc=10.0, num_samples=5)
    ref.backward()
    g_ref = {n: p.grad.clone() for n, p in ad.named_parameters()}
    ad.zero_grad()
    fast = mma_loss(
        mma.image_features(mma.image_prefix(pix), ad), y, mma.text_features(ad), tiny.logit_scale,
        anchor=anchor, w_lmc=10.0, num_samples=5,
    ).total  # fmt: skip
    fast.backward()
    assert fast.item() == pytest.approx(ref.item(), abs=1e-5)
    for n, p in ad.named_parameters():
        assert torch.allclose(p.grad, g_ref[n], atol=1e-5, rtol=1e-4), n


def test_resume_gives_the_same_adapters(tiny):
    task = FakeTask()
    lay = layout_for(tiny)
    hp = MMAHyperparameters(epochs=2, batch_size=4, feature_mode="exact", lr=0.0005)
    anchor = F.normalize(tiny.encode_text([f"a photo of a {n}." for n in task.base_classnames]), dim=-1)

    def run(resume=None, stop_after=None):
        mma = MMAModel(tiny, task.base_classnames, lay)
        ad = _adapters(tiny, lay, seed=7)
        states = []
        hist = train_mma(
            mma, ad, PrefixBatches(mma, task, hp), hp, w_lmc=10.0, anchor=anchor,
            resume_state=resume, on_epoch_end=states.append,
        )  # fmt: skip
        return ad.tensors(), states, hist

    straight, states, hist = run()
    assert len(hist) == 2 and hist[0]["lmc"] > 0
    resumed, _, hist2 = run(resume=states[0])
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert [h["loss"] for h in hist2] == [h["loss"] for h in hist]
    # the state is plain tensors: torch's weights_only reader takes it
    import io

    buf = io.BytesIO()
    torch.save(states[0], buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["epoch"] == 1


def test_recover_reports_three_curves_in_both_spaces(tiny):
    task = FakeTask()
    lay = layout_for(tiny)
    ft = _adapters(tiny, lay, seed=1).tensors()
    hp = MMAHyperparameters(epochs=1, batch_size=6, feature_mode="none", curve_step=0.5)
    out = recover_mma(tiny, task, ft, lay, hp)
    res = out.result
    assert set(res.curves) == {"adapter", "feature"}
    for space in res.curves.values():
        assert set(space) == {"zs_ft", "zs_rec", "ft_rec"}
    # adapter-space ends are the models themselves
    c = res.curves["adapter"]["zs_ft"]
    assert c.alphas == [0.0, 0.5, 1.0]
    assert c.base_acc[-1] == pytest.approx(res.metrics.fine_tuned.base)
    assert res.curves["adapter"]["ft_rec"].base_acc[-1] == pytest.approx(res.metrics.recovered.base)
    assert res.config["layout"] == lay.to_json()
    assert set(out.adapters) == set(lay.shapes())
    assert not torch.equal(out.adapters["text_adapter.2.up.weight"], ft["text_adapter.2.up.weight"])


class _GradScale(torch.autograd.Function):
    """MMA's gradient-scale layer: identity forward, gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x, scale):  # noqa: ANN001, ANN205
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return g * ctx.scale, None


def test_mma_gradient_scale_layers_divide_adapter_gradients_by_scale(tiny):
    """With MMA's branch gsl(up(shared(down(ln_1(gsl(x, s))))) * s, 1/s) the adapter gradients are the
    plain ones divided by s (what train_mma applies after backward); the forward pass is unchanged."""
    lay = layout_for(tiny)
    scale = 0.001
    mma = MMAModel(tiny, ["a"], lay, scale=scale)
    ad = _adapters(tiny, lay, seed=4)
    pix = torch.randn(2, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(3))
    v = tiny.model.visual
    h = mma.image_prefix(pix)

    def with_gsl() -> torch.Tensor:
        x = h
        for i in range(lay.start, lay.end + 1):
            block, a, s = v.transformer.resblocks[i - 1], ad.visual_adapter[i], ad.shared_adapter[i]
            y = _GradScale.apply(x, scale)
            y = a.up(s(a.down(block.ln_1(y)))) * scale
            y = _GradScale.apply(y, 1.0 / scale)
            x = block(x) + y
        pooled, _ = v._pool(x)
        return pooled @ v.proj

    target = torch.randn(2, tiny.embed_dim, generator=torch.Generator().manual_seed(6))
    plain = mma.image_features(h, ad)
    ((plain - target) ** 2).sum().backward()
    g_plain = {n: p.grad.clone() for n, p in ad.named_parameters() if p.grad is not None}
    ad.zero_grad()
    ref = with_gsl()
    assert torch.allclose(ref, plain, atol=1e-6)
    ((ref - target) ** 2).sum().backward()
    assert g_plain
    for n, p in ad.named_parameters():
        if n in g_plain:
            want = g_plain[n] / scale  # entries near 24 in size: the tolerance follows the largest
            assert torch.allclose(p.grad, want, rtol=1e-4, atol=1e-6 * float(want.abs().max())), n


@pytest.mark.parametrize("gradient_scale", [False, True])
def test_first_sgd_step_is_the_references_or_mmas(tiny, gradient_scale):
    """One SGD step (the whole training set in one batch, momentum buffer empty) moves each adapter
    parameter by -lr (g + wd p) without gradient-scale layers (the reference's MMA_LMC, the default) and
    by -lr (g / scale + wd p) with them (MMA's own trainer): a step 1000x larger at scale 0.001."""
    task = FakeTask()
    lay = layout_for(tiny)
    lr, wd, scale = 0.002, 5e-4, 0.001
    hp = MMAHyperparameters(
        epochs=1, batch_size=len(task.train), feature_mode="none", lr=lr, weight_decay=wd,
        adapter_scale=scale, gradient_scale=gradient_scale, w_lmc=10.0,
    )  # fmt: skip
    assert MMAHyperparameters().gradient_scale is False
    anchor = F.normalize(tiny.encode_text([f"a photo of a {n}." for n in task.base_classnames]), dim=-1)
    mma = MMAModel(tiny, task.base_classnames, lay, scale=scale)
    batches = PrefixBatches(mma, task, hp)
    ad = _adapters(tiny, lay, seed=9)
    before = {n: p.detach().clone() for n, p in ad.named_parameters()}
    # the gradient of the whole-set loss at the start, by itself
    (h, y), *rest = list(batches.epoch(0))
    assert not rest and len(y) == len(task.train)
    mma_loss(
        mma.image_features(h, ad), y, mma.text_features(ad), tiny.logit_scale,
        anchor=anchor, w_lmc=10.0, num_samples=5,
    ).total.backward()  # fmt: skip
    grads = {n: p.grad.detach().clone() for n, p in ad.named_parameters()}
    ad.zero_grad(set_to_none=True)
    train_mma(mma, ad, batches, hp, w_lmc=10.0, anchor=anchor)
    factor = 1.0 / scale if gradient_scale else 1.0
    moved = 0.0
    for n, p in ad.named_parameters():
        expected = before[n] - lr * (grads[n] * factor + wd * before[n])
        assert torch.allclose(p.detach(), expected, rtol=1e-4, atol=1e-7), n
        moved = max(moved, float((p.detach() - before[n]).abs().max()))
    assert moved > 0


def test_stage1_trains_with_mmas_gradient_scale(tiny, monkeypatch):
    """MMA's own trainer has the gradient-scale layers: stage 1 uses them whatever the hyperparameters say."""
    import mergetune.core.method.mma as mma_mod

    seen = []
    real = mma_mod.train_mma
    monkeypatch.setattr(
        mma_mod, "train_mma", lambda *a, **k: seen.append(a[3].gradient_scale) or real(*a, **k)
    )
    mma_mod.train_mma_stage1(
        tiny, FakeTask(), MMAHyperparameters(epochs=1, batch_size=6, feature_mode="none")
    )
    assert seen == [True]


def test_adapter_change_by_hand():
    from mergetune.core.method.mma import adapter_change

    ft = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 4.0])}  # ||ft|| = 5
    rec = {"a": torch.tensor([3.03, 0.0]), "b": torch.tensor([0.0, 4.04])}  # ||rec - ft|| = 0.05
    assert adapter_change(ft, rec) == pytest.approx(0.01)
    assert adapter_change({"a": torch.zeros(2)}, {"a": torch.ones(2)}) == 0.0


def test_the_references_update_barely_moves_mma_adapters_and_the_verdict_says_so(tiny):
    """Adapters trained by MMA's own update, then MergeTune with the job defaults (the reference's
    update): they move well under 1% and the verdict warns ``adapters_unmoved``; with MMA's update
    (``gradient_scale`` true) they move and there is no such warning."""
    from mergetune.core.method.mma import train_mma_stage1

    task = FakeTask()
    ft, lay, _ = train_mma_stage1(
        tiny, task, MMAHyperparameters(epochs=3, batch_size=6, feature_mode="none", lr=0.005)
    )
    ref = recover_mma(
        tiny, task, ft, lay, MMAHyperparameters(epochs=2, batch_size=6, feature_mode="none", curve_step=0.5)
    )
    change = ref.result.config["adapter_change"]
    assert 0 < change < 0.01
    codes = [w.code for w in ref.result.verdict.warnings]
    assert "adapters_unmoved" in codes and not ref.result.verdict.ok
    assert "gradient_scale is false" in ref.result.verdict.text
    assert ref.result.config["update"] == "ordinary gradients (the reference's MMA_LMC)"
    mma_step = recover_mma(
        tiny, task, ft, lay,
        MMAHyperparameters(epochs=2, batch_size=6, feature_mode="none", curve_step=0.5, gradient_scale=True),
    )  # fmt: skip
    assert mma_step.result.config["adapter_change"] > 0.05
    assert "adapters_unmoved" not in [w.code for w in mma_step.result.verdict.warnings]
