"""``mergetune project list|set|usage``: the operator's settings of each project (weight, running
limit, quotas...), written straight into the server's database, and every project's usage."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from mergetune.cli.options import UserError
from mergetune.cli.output import print_json, print_list, say
from mergetune.ops import load_settings, server_errors
from mergetune.ops.tokens import open_token_db

app = typer.Typer(
    name="project", help="projects: fair-share weight, running limit, quotas, usage", no_args_is_help=True
)


def parse_limit(text: str) -> int:
    """A limit (running jobs, seconds): a whole number >= 1, or ``none`` (no limit: 0 here, None in the row)."""
    raw = text.strip().lower()
    if raw in ("none", "off", "unlimited"):
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise typer.BadParameter(f"{text!r} is not a limit: use a whole number >= 1 or none")
    return int(raw)


def _mlflow_uri(text: str | None) -> str | None:
    """``--mlflow-tracking-uri``: None (not given), "" (none: no tracking) or an http(s) URL."""
    if text is None:
        return None
    raw = text.strip()
    if raw.lower() == "none":
        return ""
    if not raw.startswith(("http://", "https://")) or len(raw) <= len("https://") or len(raw) > 1024:
        raise UserError(f"--mlflow-tracking-uri must be an http:// or https:// URL or none, not {text!r}")
    return raw.rstrip("/")


def _row(p: Any, running: int, queued: int) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "weight": p.weight,
        "max_running_jobs": p.max_running_jobs,
        "mlflow_tracking_uri": p.mlflow_tracking_uri,
        "mlflow_experiment": p.mlflow_experiment,
        "default_max_runtime_seconds": p.default_max_runtime_seconds,
        "retention_days": p.retention_days,
        "quota_stored_bytes": p.quota_stored_bytes,
        "quota_device_seconds_per_day": p.quota_device_seconds_per_day,
        "running": running,
        "queued": queued,
    }


def _counts(s: Any) -> tuple[dict[str, int], dict[str, int]]:
    from sqlalchemy import func, select

    from mergetune.common.models import ACTIVE_STATUSES, Job, JobStatus

    def by_project(statuses: list[str]) -> dict[str, int]:
        rows = s.execute(
            select(Job.project_id, func.count()).where(Job.status.in_(statuses)).group_by(Job.project_id)
        )
        return {pid: int(n) for pid, n in rows}

    return (
        by_project([st.value for st in ACTIVE_STATUSES]),
        by_project([JobStatus.queued.value, JobStatus.validating.value]),
    )


@app.command("list")
@server_errors
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List projects: weight, running limit, running and queued jobs."""
    from sqlalchemy import select

    from mergetune.common.db import session_scope
    from mergetune.common.models import Project

    settings = open_token_db(load_settings())
    with session_scope(settings.DATABASE_URL) as s:
        running, queued = _counts(s)
        rows = [
            _row(p, running.get(p.id, 0), queued.get(p.id, 0))
            for p in s.scalars(select(Project).order_by(Project.name))
        ]
    if as_json:
        print_list(rows)
        return
    _table(rows, ["id", "name", "weight", "max_running_jobs", "running", "queued"])


@app.command("usage")
@server_errors
def usage(
    days: Annotated[int, typer.Option("--days", min=1, max=366, help="days of the per-day breakdown")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """The operator's view of every project's usage: device seconds, jobs and stored bytes (what
    ``GET /v1/usage`` answers each project about itself; with ``--json``, its per-day rows too)."""
    from sqlalchemy import select

    from mergetune.common.db import session_scope
    from mergetune.common.models import Project, utcnow
    from mergetune.common.usage import project_usage

    settings = open_token_db(load_settings())
    with session_scope(settings.DATABASE_URL) as s:
        rows = [
            {"name": p.name, **project_usage(s, p.id, days=days, now=utcnow())}
            for p in s.scalars(select(Project).order_by(Project.name))
        ]
    if as_json:
        print_list(rows)
        return
    flat = [{**r, "stored_bytes": r["stored_bytes"]["total"]} for r in rows]
    _table(flat, ["project_id", "name", "device_seconds", "jobs", "stored_bytes"])


def _table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    """``cols`` of ``rows`` as left-aligned columns under upper-case headers ("-" for None)."""
    text = [{c: ("-" if r[c] is None else str(r[c])) for c in cols} for r in rows]
    widths = {c: max([len(c), *(len(r[c]) for r in text)]) for c in cols}
    sys.stdout.write("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip() + "\n")
    for r in text:
        sys.stdout.write("  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() + "\n")


@app.command("set")
@server_errors
def set_(
    project: Annotated[str, typer.Argument(help="project name or id")],
    weight: Annotated[
        float | None,
        typer.Option(
            help="fair-share weight (> 0; default 1): a project with weight 2 gets twice the device time"
        ),
    ] = None,
    max_running: Annotated[
        int | None,
        typer.Option(
            parser=parse_limit, metavar="N|none", help="at most N of its jobs run at once; none: no limit"
        ),
    ] = None,
    max_runtime: Annotated[
        int | None,
        typer.Option(
            parser=parse_limit,
            metavar="SECONDS|none",
            help="max_runtime_seconds of its jobs that give none; none: no deadline",
        ),
    ] = None,
    retention_days: Annotated[
        int | None,
        typer.Option(
            parser=parse_limit,
            metavar="DAYS|none",
            help="the reconciler removes the files of its jobs finished more than DAYS ago (status expired)",
        ),
    ] = None,
    quota_stored_bytes: Annotated[
        int | None,
        typer.Option(
            parser=parse_limit,
            metavar="BYTES|none",
            help="hard cap on the bytes it stores (uploads over it: 403)",
        ),
    ] = None,
    quota_device_seconds: Annotated[
        int | None,
        typer.Option(
            parser=parse_limit,
            metavar="SECONDS|none",
            help="device seconds per UTC day; then new jobs get 429 and queued ones wait for midnight",
        ),
    ] = None,
    mlflow_tracking_uri: Annotated[
        str | None,
        typer.Option(
            metavar="URL|none",
            help="MLflow tracking server its jobs log their runs to (a job's own mlflow overrides it); none: no tracking",
        ),
    ] = None,
    mlflow_experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment of its jobs' runs (default mergetune)")
    ] = None,
) -> None:
    """Set a project's fair-share weight, running limit and/or MLflow tracking; prints the project as JSON."""
    from sqlalchemy import or_, select

    from mergetune.common.db import session_scope
    from mergetune.common.models import Project

    if (
        weight is None
        and max_running is None
        and max_runtime is None
        and retention_days is None
        and quota_stored_bytes is None
        and quota_device_seconds is None
        and not (mlflow_tracking_uri or mlflow_experiment)
    ):
        raise UserError(
            "nothing to set: give --weight, --max-running, --max-runtime, --retention-days, --quota-stored-bytes, --quota-device-seconds or --mlflow-tracking-uri"
        )
    uri = _mlflow_uri(mlflow_tracking_uri)
    if mlflow_experiment is not None and not (0 < len(mlflow_experiment.strip()) <= 255):
        raise UserError("--mlflow-experiment must be 1 to 255 characters")
    if max_runtime is not None and max_runtime > 30 * 86400:
        raise UserError(f"--max-runtime must be at most 2592000 s (30 days), not {max_runtime}")
    if weight is not None and not (0 < weight <= 1e6):
        raise UserError(f"--weight must be > 0 and <= 1000000, not {weight:g}")
    settings = open_token_db(load_settings())
    with session_scope(settings.DATABASE_URL) as s:
        p = s.scalars(select(Project).where(or_(Project.name == project, Project.id == project))).first()
        if p is None:
            raise UserError(f"no project named {project!r} (`mergetune project list` shows them)")
        if weight is not None:
            p.weight = float(weight)
        if max_running is not None:
            p.max_running_jobs = max_running or None
        if max_runtime is not None:
            p.default_max_runtime_seconds = max_runtime or None
        if retention_days is not None:
            p.retention_days = retention_days or None
        if quota_stored_bytes is not None:
            p.quota_stored_bytes = quota_stored_bytes or None
        if quota_device_seconds is not None:
            p.quota_device_seconds_per_day = float(quota_device_seconds) or None
        if uri is not None:
            p.mlflow_tracking_uri = uri or None
        if mlflow_experiment is not None:
            p.mlflow_experiment = mlflow_experiment.strip()
        s.flush()
        running, queued = _counts(s)
        row = _row(p, running.get(p.id, 0), queued.get(p.id, 0))
    say(
        f"project {row['name']}: weight {row['weight']:g}, running limit {row['max_running_jobs'] or 'none'}, "
        f"default max runtime {row['default_max_runtime_seconds'] or 'none'}"
    )
    print_json(row)


def register(root: typer.Typer) -> None:
    root.add_typer(app)
