"""The Grafana dashboard and the Prometheus scrape config under docker/monitoring: valid files, started by
compose's monitoring profile, and every metric the dashboard queries is one the API's /metrics exports
(read from a real app on Postgres holding a succeeded job and a worker heartbeat)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MON = REPO / "docker" / "monitoring"
DASHBOARD = MON / "grafana" / "dashboards" / "mergetune.json"


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_and_scrape_config_are_valid_and_provisioned():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("jobs by status", "queue depth", "duration", "heartbeat", "recovered hm"):
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = yaml.safe_load((MON / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])
    provider = yaml.safe_load((MON / "grafana/provisioning/dashboards/mergetune.yml").read_text())
    dash_dir = provider["providers"][0]["options"]["path"]

    prom = yaml.safe_load((MON / "prometheus.yml").read_text())
    (scrape,) = prom["scrape_configs"]
    assert scrape["metrics_path"] == "/metrics" and scrape["static_configs"][0]["targets"] == ["api:8000"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert compose[name]["profiles"] == ["monitoring"], name
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["grafana"]["volumes"]}
    assert (REPO / mounts[dash_dir] / DASHBOARD.name).is_file()
    assert (REPO / mounts["/etc/grafana/provisioning"] / "datasources" / "prometheus.yml").is_file()
    assert any(v.startswith("./docker/monitoring/prometheus.yml:") for v in compose["prometheus"]["volumes"])
    assert "api" in compose and "8000" in json.dumps(compose["api"])  # what the scrape target names


def test_every_metric_the_dashboard_queries_is_exported(client, settings):
    from mergetune.common.db import session_scope
    from mergetune.common.models import Checkpoint, Dataset, Job, WorkerHeartbeat, utcnow

    with session_scope(settings.DATABASE_URL) as s:
        from mergetune.common import repositories as repo

        project = repo.get_or_create_project(s, "monitoring")
        ck = Checkpoint(project_id=project.id, name="c", filename="c", bytes=1, sha256="ab" * 32, format="dassl",
                        method="coop", status="ready", n_ctx=4, ctx_dim=64, csc=False)  # fmt: skip
        ds = Dataset(project_id=project.id, name="d", kind="builtin", path="", num_classes=6,
                     classnames=list("abcdef"), base_classes=list("abc"), novel_classes=list("def"),
                     split_sizes={}, template="{}", sha256_of_split="cd" * 32)  # fmt: skip
        s.add_all([ck, ds])
        s.flush()
        now = utcnow()
        s.add(Job(project_id=project.id, checkpoint_id=ck.id, dataset_id=ds.id, job_type="prompt",
                  backbone={}, hyperparameters={}, status="succeeded", started_at=now - timedelta(seconds=90),
                  finished_at=now, metrics={"recovered": {"base": 60.0, "novel": 40.0, "hm": 48.0}},
                  verdict={"warnings": [{"code": "below_zero_shot", "message": "x"}]}))  # fmt: skip
        s.merge(
            WorkerHeartbeat(hostname="gpu0@test", last_seen=now - timedelta(seconds=5), current_job_id=None)
        )

    text = client.get("/metrics").text
    exported = {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? ", text, re.M)}
    used: set[str] = set()
    for expr in _exprs(json.loads(DASHBOARD.read_text(encoding="utf-8"))):
        used |= set(re.findall(r"\b(mergetune_[a-z0-9_]+)", expr))
    assert used, "the dashboard queries no mergetune metric"
    missing = sorted(used - exported)
    assert missing == [], f"queried but not exported: {missing}"
    # real values behind the new panels
    assert re.search(
        r'^mergetune_worker_heartbeat_age_seconds\{hostname="gpu0@test"\} ([0-9.]+)$', text, re.M
    )
    assert re.search(r"^mergetune_workers_live \d", text, re.M)
    assert re.search(r'^mergetune_recovered_hm_bucket\{le="50.0"\} [1-9]', text, re.M)
