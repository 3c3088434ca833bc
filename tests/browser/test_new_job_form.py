"""The new-job form in a real headless Chromium: "Start job" is disabled, with the reason next to it,
until a checkpoint and a dataset are chosen and every shown number is valid; the settings are grouped by
method and only the groups of the chosen checkpoint's job type are shown (MMA-only fields hidden for a
CoOp checkpoint, shown for an MMA one). A fresh project of rows: no worker runs anything."""

from __future__ import annotations

import pytest
from browser_support import Stack, dataset_row, new_project

pytestmark = pytest.mark.browser


def _checkpoints(url: str, project_id: str) -> dict[str, str]:
    """A ready CoOp, MMA and linear-head checkpoint and a dataset (rows) in ``project_id``."""
    from mergetune.common.db import session_scope
    from mergetune.common.models import Checkpoint

    with session_scope(url) as s:
        rows = {
            method: Checkpoint(project_id=project_id, name=f"{method}-ckpt", filename="m.pth.tar", bytes=100,
                               sha256="ab" * 32, format="dassl", method=method, status="ready")
            for method in ("coop", "mma", "linear_head")
        }  # fmt: skip
        ds = dataset_row(project_id)
        s.add_all([*rows.values(), ds])
        s.flush()
        return {**{m: c.id for m, c in rows.items()}, "dataset": ds.id}


def test_start_waits_for_a_valid_form_and_only_the_methods_settings_show(page, stack: Stack) -> None:
    project_id, token = new_project(stack.database_url)
    ids = _checkpoints(stack.database_url, project_id)
    page.goto(f"{stack.url}/login")
    page.fill("#token", token)
    page.click("#login-submit")
    page.wait_for_selector("#jobs")
    page.goto(f"{stack.url}/jobs/new")

    submit, why = page.locator("#new-job-submit"), page.locator("#new-job-why")
    assert submit.is_disabled()
    assert why.inner_text() == "Choose a checkpoint to start a job."
    assert submit.get_attribute("aria-describedby") == "new-job-why"
    legends = page.locator("fieldset.hp-group legend").all_inner_texts()
    assert legends == [
        "Common to every job",
        "MergeTune prompt recovery (CoOp, KgCoOp checkpoints)",
        "Warm-up and feature mode (prompt and MMA jobs)",
        "Linear-head recovery (linear-head checkpoints)",
        "MMA (Multi-Modal Adapter checkpoints)",
    ]

    page.select_option("#checkpoint_id", ids["coop"])
    assert submit.is_disabled() and why.inner_text() == "Choose a dataset to start a job."
    for name in ("adapter_scale", "gradient_scale", "normalise_endpoints", "lam"):
        assert not page.locator(f"#{name}").is_visible(), name
    for name in ("epochs", "w_zs", "bank_views", "warmup_epochs", "class_token_position"):
        assert page.locator(f"#{name}").is_visible(), name

    page.select_option("#dataset_id", ids["dataset"])
    assert submit.is_enabled() and why.inner_text() == ""

    page.fill("#epochs", "0")  # below the minimum: the input's own constraint says why
    assert submit.is_disabled()
    assert why.inner_text().startswith("Epochs epochs: ")
    page.fill("#epochs", "3")
    assert submit.is_enabled()
    page.fill("#w_zs", "-1")  # a CoOp setting, out of range
    assert submit.is_disabled() and why.inner_text().startswith("Zero-shot surrogate weight W w_zs: ")

    page.select_option("#checkpoint_id", ids["mma"])
    for name in ("adapter_scale", "gradient_scale", "normalise_endpoints", "warmup_epochs", "epochs"):
        assert page.locator(f"#{name}").is_visible(), name
    for name in ("w_zs", "bank_views", "lam", "class_token_position"):
        assert not page.locator(f"#{name}").is_visible(), name
    assert submit.is_enabled()  # w_zs is hidden and disabled for MMA: neither validated nor sent
    assert page.eval_on_selector("#hp-prompt", "f => f.disabled && f.hidden")

    page.select_option("#checkpoint_id", ids["linear_head"])
    assert page.locator("#lam").is_visible() and not page.locator("#adapter_scale").is_visible()
    assert not page.locator("#warmup_epochs").is_visible()
