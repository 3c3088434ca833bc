"""MMA adapters on open_clip's towers and the MMA + MergeTune objective (ALGORITHM.md section 6c)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mergetune.core.checkpoints.mma_layout import AdapterLayout, default_span, layout_from_shapes
from mergetune.core.config import BackboneSpec, MMAHyperparameters
from mergetune.core.method.mma import (
    MMAAdapters,
    MMAModel,
    PrefixBatches,
    backbone_widths,
    layout_for,
    mma_loss,
    recover_mma,
    reference_step_loss,
    train_mma,
)
from mergetune.core.model.backbone import load_backbone
from tests.core.core_fakes import FakeTask


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"))


def _adapters(backbone, layout, seed=0):
    w = backbone_widths(backbone)
    return MMAAdapters(layout, w["text_layers"], w["visual_layers"], seed=seed)


def test_vit_b16_layout_is_mmas_config():
    """MMA's shipped config on ViT-B/16: blocks 5..12 (1-based), bottleneck 32, widths 512 / 768."""
    assert default_span(12) == (5, 12)
    lay = AdapterLayout(text_width=512, visual_width=768)
    shapes = lay.shapes()
    assert len(shapes) == 8 * (4 + 4 + 2)
    assert shapes["text_adapter.5.down.0.weight"] == (32, 512)
    assert shapes["text_adapter.12.up.weight"] == (512, 32)
    assert shapes["visual_adapter.5.down.0.weight"] == (32, 768)
    assert shapes["visual_adapter.12.up.bias"] == (768,)
    assert shapes["shared_adapter.5.0.weight"] == (32, 32)
    assert "text_adapter.4.up.weight" not in shapes and "shared_adapter.13.0.bias" not in shapes
    assert layout_from_shapes(shapes) == lay
    # small towers: the upper two thirds (tiny-clip: 4 blocks -> 2..4)
    assert default_span(4) == (2, 4) and default_span(1) == (1, 1) and default_span(24) == (9, 24)


def test_state_dict_keys_are_mmas(tiny):
    lay = layout_for(tiny)
    assert (lay.start, lay.end, lay.dim) == (2, 4, 32)
    sd = _adapters(tiny, lay).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == lay.shapes()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("shared_adapter.6.0.bias"), "missing"),
        (lambda s: s.update({"text_adapter.6.up.weight": (512, 16)}), "shape"),
        (lambda s: [s.pop(k) for k in list(s) if ".7." in k], "contiguous"),
        (lambda s: [s.pop(k) for k in list(s) if k.startswith("visual_adapter.12")], "same blocks"),
    ],
)
def test_layout_from_shapes_refuses_inconsistent_files(edit, message):
    shapes = dict(AdapterLayout(512, 768).shapes())
    edit(shapes)
    with pytest.raises(ValueError, match=message):
        layout_from_shapes(shapes)


def test_zero_adapters_are_the_plain_backbone(tiny):
    lay = layout_for(tiny)
    names = ["red circle", "blue square"]
    mma = MMAModel(tiny, names, lay)
    zero = _adapters(tiny, lay).zero_()
    ref_t = tiny.encode_text([f"a photo of a {n}." for n in names])
    assert torch.allclose(mma.text_features(zero), ref_t, atol=1e-5)
    pix = torch.randn(3, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_i = tiny.model.encode_image(pix)
        assert torch.allclose(mma.image_features(mma.image_prefix(pix), zero), ref_i, atol=1e-5)


def test_adapted_block_adds_scaled_bottleneck_of_its_own_ln1(tiny):
    """Block i: block_i(x) + scale * up(shared(relu(down(ln_1_i(x))))) with relu after down and after
    the shared layer, exactly as MMA's ModifiedResidualAttentionBlock."""
    lay = layout_for(tiny)
    mma = MMAModel(tiny, ["a"], lay, scale=0.5)
    ad = _adapters(tiny, lay, seed=3)
    pix = torch.randn(2, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(1))
    v = tiny.model.visual
    with torch.no_grad():
        x = v._embeds(pix)
        blocks = v.transformer.resblocks
        x = blocks[0](x)  # block 1: frozen, no adapter
        for i in (2, 3, 4):
            t, s = ad.visual_adapter[i], ad.shared_adapter[i]
            h = blocks[i - 1].ln_1(x)
            y = torch.relu(h @ t.down[0].weight.T + t.down[0].bias)
            y = torch.relu(y @ s[0].weight.T + s[0].bias)
            y = y @ t.up.weight.T + t.up.bias
            x = blocks[i - 1](x) + 0.5 * y
        pooled, _ = v._pool(x)
        want = pooled @ v.proj
        got = mma.image_features(mma.image_prefix(pix), ad)
    assert torch.allclose(got, want, atol=1e-5)


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
