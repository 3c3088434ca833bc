"""The reference implementation's training step and test loop, rebuilt for side-by-side timing.

This mirrors how the authors' research code (Dassl/CoOp ``CustomCLIP`` + KgCoOp + the MergeTune
trainer) computes one step, *including its waste*, on the same loaded open_clip model and the same
``PromptLearner`` buffers as ours (it reuses the model's own modules, never a fork):

- ``CustomCLIP.forward(image)``: image encoder pass, then the learned prompts through the text
  encoder at the full 77 tokens (CoOp's ``TextEncoder``: + positional embedding, transformer,
  ln_final, EOT token, projection) -> CE logits.                         image pass 1, text pass 1
- KgCoOp term: the learned prompts are encoded *again* (``get_text_features``) and compared with the
  cached zero-shot anchor.                                               text pass 2 (with gradient)
- MergeTune path term: the fine-tuned prompts (constant) are encoded every step, then for each of the
  K path points the merged classifier is formed and ``model(image)``-style logits re-run the frozen
  image encoder on the same batch.                                       text pass 3, image passes 2..1+K
- Test (Dassl ``test()``): ``model(image)`` per test batch, i.e. the prompts are re-encoded for every
  batch.

Numerically it computes the same objective as ``mergetune.core.method.objectives.total_loss`` (ALGORITHM.md section 2)
up to float rounding, which ``bench/step.py`` checks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from mergetune.core.config import Hyperparameters, path_points
from mergetune.core.model.prompts import PromptLearner


class ReferenceModel:
    """CoOp's CustomCLIP around our learner's buffers and the backbone's modules (no trimming)."""

    def __init__(self, learner: PromptLearner, ctx_ft: torch.Tensor, anchor: torch.Tensor, amp: bool):
        self.learner = learner
        self.model = learner.backbone.model
        self.ctx_ft = ctx_ft.to(learner.ctx.device)
        self.anchor = anchor  # KgCoOp's text_features_old: computed once at build time (normalised)
        self.amp = amp
        self.device = learner.ctx.device

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.amp)

    def image_encoder(self, image: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.encode_image(image.to(self.device))

    def text_encoder(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """All 77 positions, every time (the reference never trims)."""
        with self._autocast():
            return self.learner.encode(self.learner.prompt_embeddings(ctx), trim=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image_features = self.image_encoder(image)
        text_features = self.text_encoder()
        image_features = F.normalize(image_features.float(), dim=-1)
        text_features = F.normalize(text_features.float(), dim=-1)
        return self.model.logit_scale.exp() * image_features @ text_features.t()


def reference_loss(ref: ReferenceModel, image: torch.Tensor, label: torch.Tensor, hp: Hyperparameters):
    """One forward of the reference MergeTune objective (1 + K image passes, 3 text passes at 77)."""
    label = label.to(ref.device)
    output = ref.forward(image)  # image pass 1, text pass 1
    loss_ce = F.cross_entropy(output, label)
    loss = loss_ce
    text_features = ref.text_encoder().float()  # text pass 2 (learned prompts again)
    if hp.w_zs > 0:
        cos = F.cosine_similarity(F.normalize(text_features, dim=-1), ref.anchor, dim=-1)
        if hp.loss_type.value == "cosine":
            loss_zs = 1.0 - cos.mean()
        else:
            loss_zs = (F.normalize(text_features, dim=-1) - ref.anchor).norm(dim=-1).mean()
        loss = loss + hp.w_zs * loss_zs
    if hp.path_term and hp.w_lmc > 0:
        with torch.no_grad():
            ft_features = ref.text_encoder(ref.ctx_ft).float()  # text pass 3: the constant, every step
        lmc = 0.0
        tau = ref.model.logit_scale.exp()
        for t in path_points(hp.num_samples):
            merged = F.normalize((1.0 - t) * ft_features + t * text_features, dim=-1)
            image_features = F.normalize(ref.image_encoder(image).float(), dim=-1)  # image pass 1 + k
            lmc = lmc + F.cross_entropy(tau * image_features @ merged.t(), label)
        loss = loss + hp.w_lmc * lmc / hp.num_samples
    return loss


def reference_step(
    ref: ReferenceModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    image: torch.Tensor,
    label: torch.Tensor,
    hp: Hyperparameters,
) -> float:
    loss = reference_loss(ref, image, label, hp)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


@torch.no_grad()
def reference_test(ref: ReferenceModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Dassl's test loop: ``model(image)`` per batch (prompts re-encoded each batch); top-1 %."""
    correct = total = 0
    for image, label in batches:
        pred = ref.forward(image).argmax(dim=-1).cpu()
        correct += int((pred == label).sum())
        total += len(label)
    return 100.0 * correct / max(total, 1)


def dassl_epoch(
    ref: ReferenceModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    backbone,
    source,
    records: list,
    hp: Hyperparameters,
    epoch: int,
    *,
    max_steps: int | None = None,
) -> tuple[int, float]:
    """One epoch of Dassl's train loop: every image read and augmented again every step (batches of
    ``hp.batch_size``, drop_last as Dassl), then the reference step. Returns (steps run, seconds)."""
    import time

    from mergetune.core.model.features import _mix, augment, batch_plan

    steps, _ = batch_plan(len(records), hp.batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(epoch)).tolist()
    labels = torch.tensor([int(r.label) for r in records])
    dev = ref.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = order[step * hp.batch_size : (step + 1) * hp.batch_size]
        images = torch.stack(
            [augment(backbone, source.load_image(records[i].key), _mix(9, epoch, i)) for i in idx]
        )
        reference_step(ref, optimizer, scaler, images, labels[idx], hp)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return steps, time.perf_counter() - t0
