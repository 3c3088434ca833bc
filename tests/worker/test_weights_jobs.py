"""Worker side of weights: OpenAI-format files build with QuickGELU and the job says so; files outside the
model root never load, whatever the job row says (the API refuses them first; this is the second line)."""

from __future__ import annotations

from pathlib import Path

import torch
import worker_support as ws


def _set_backbone(url: str, job_id: str, backbone: dict[str, str]) -> None:
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job

    with session_scope(url) as s:
        s.get(Job, job_id).backbone = backbone


def test_openai_weights_job_warns_and_records_quick_gelu(wsettings, store, rows) -> None:
    from mergetune.core.config import BackboneSpec
    from mergetune.core.model.backbone import load_backbone
    from mergetune.worker.backbones import clear
    from mergetune.worker.pipeline import run_job

    src = load_backbone(BackboneSpec(**ws.TINY_BACKBONE)).model  # the job's own random weights
    sd = {k: v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()}
    sd.update(
        input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408)
    )
    root = Path(wsettings.MODEL_ROOT)
    (root / "openai").mkdir(parents=True, exist_ok=True)
    torch.save(sd, root / "openai" / "tiny.pt")

    project, ck, ds = rows
    job_id = ws.make_job(wsettings.DATABASE_URL, project, ck, ds, epochs=1, shots=2, feature_mode="none")
    _set_backbone(wsettings.DATABASE_URL, job_id, {"model": "tiny-test", "pretrained": "openai/tiny.pt"})
    clear()
    assert run_job(job_id, settings=wsettings, hostname="w@test") == "succeeded"
    warnings = [e for e in ws.events(wsettings.DATABASE_URL, job_id) if e["level"] == "warning"]
    assert any("QuickGELU" in e["message"] and "tiny-test" in e["message"] for e in warnings), warnings
    key = f"jobs/{job_id}/manifest.json"
    import json

    manifest = json.loads(Path(store.local_path(key)).read_text())
    assert manifest["backbone"]["activation"] == "quick_gelu"
    assert manifest["backbone"]["weights_format"] == "openai_state_dict"


def test_worker_refuses_weights_outside_the_model_root(wsettings, store, rows, tmp_path) -> None:
    from mergetune.worker.backbones import clear
    from mergetune.worker.pipeline import run_job

    outside = tmp_path / "elsewhere.pt"
    torch.save({"x": torch.zeros(1)}, outside)
    project, ck, ds = rows
    for pretrained in (str(outside), "../elsewhere.pt", f"../artifacts/checkpoints/{ck}/tensors.safetensors"):
        job_id = ws.make_job(wsettings.DATABASE_URL, project, ck, ds, epochs=1, shots=2)
        _set_backbone(wsettings.DATABASE_URL, job_id, {"model": "tiny-test", "pretrained": pretrained})
        clear()
        assert run_job(job_id, settings=wsettings, hostname="w@test") == "failed"
        err = ws.job_row(wsettings.DATABASE_URL, job_id)["error"]
        assert err["code"] == "path_outside_root" and err["param"] == "backbone.pretrained", err


def test_heartbeat_reports_the_loadable_weights_and_withdraws_them(wsettings) -> None:
    """A worker's heartbeat row carries the weights files under its model root (never the artifact store)
    and the cached open_clip tags; a stopped worker withdraws the report."""
    from mergetune.common.db import session_scope
    from mergetune.common.models import WorkerHeartbeat
    from mergetune.worker.backbones import weights_report
    from mergetune.worker.heartbeat import Heartbeat

    root = Path(wsettings.MODEL_ROOT)
    (root / "openai").mkdir(parents=True, exist_ok=True)
    (root / "openai" / "ViT-B-16.pt").write_bytes(b"w")
    (root / "notes.txt").write_text("not weights")
    report = weights_report(wsettings)
    assert report["files"] == ["openai/ViT-B-16.pt"] and report["tags"] == []

    hb = Heartbeat(
        wsettings.DATABASE_URL, "inventory@test", info={"pid": 1}, report=lambda: report, interval=60
    )
    hb.start()
    try:
        with session_scope(wsettings.DATABASE_URL) as s:
            assert s.get(WorkerHeartbeat, "inventory@test").info["weights"]["files"] == ["openai/ViT-B-16.pt"]
    finally:
        hb.stop()
    with session_scope(wsettings.DATABASE_URL) as s:
        row = s.get(WorkerHeartbeat, "inventory@test")
        assert "weights" not in row.info
        s.delete(row)
