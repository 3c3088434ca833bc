"""``mergetune job create|wait|get|cancel|events|list`` and ``mergetune download``: run a recovery job,
follow it, and fetch what it made."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from mergetune.cli import options as o
from mergetune.cli.output import ProgressBar, job_progress, print_json, print_lines, print_list, say

app = typer.Typer(name="job", help="jobs", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(metavar="JOB", help="job id (job_...)")]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "expired"]


@app.command("create")
def create(
    checkpoint: Annotated[str, typer.Option(metavar="ID", help="checkpoint id (ckpt_...)")],
    dataset: Annotated[str, typer.Option(metavar="ID", help="dataset id (ds_...)")],
    model: o.Model = None,
    pretrained: o.Pretrained = None,
    hp: Annotated[
        list[str] | None,
        typer.Option("--hp", metavar="KEY=VALUE", help="a hyperparameter, e.g. epochs=10 (repeatable)"),
    ] = None,
    hyperparameters: o.Hyperparameters = None,
    metadata: o.Metadata = None,
    eval_dataset: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ID", help="another dataset to evaluate the result on (cross-dataset / shift; repeatable)"
        ),
    ] = None,
    protocol: Annotated[
        o.Protocol | None,
        typer.Option(help="classes the checkpoint was trained on: the base half (default) or all"),
    ] = None,
    class_token_position: Annotated[
        o.TokenPosition | None, typer.Option(help="overrides the upload's")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(metavar="KEY", help="default: a fresh key (a retry never makes two jobs)")
    ] = None,
    url: o.Url = None,
    token: o.Token = None,
    timeout: o.Timeout = 300.0,
) -> None:
    """Create a recovery job; prints it as JSON."""
    hp_values = o.hyperparameters(hyperparameters, hp)
    with o.connect(url, token, timeout) as c:
        job = c.create_job(
            checkpoint,
            dataset,
            backbone=o.backbone(model, pretrained),
            hyperparameters=hp_values,
            metadata=o.pairs(metadata, typed=False),
            idempotency_key=idempotency_key,
            eval_dataset_ids=eval_dataset,
            protocol=protocol,
            class_token_position=class_token_position,
        )
    print_json(job)


@app.command("wait")
def wait(
    job: JobId,
    interval: o.Interval = 1.0,
    wait_timeout: o.WaitTimeout = None,
    quiet: o.Quiet = False,
    poll: Annotated[
        bool, typer.Option("--poll", help="poll every --interval instead of following the event stream")
    ] = False,
    url: o.Url = None,
    token: o.Token = None,
    timeout: o.Timeout = 300.0,
) -> None:
    """Wait for a job with a progress bar on stderr; exit 0 when it succeeded. Follows the job's event
    stream (server-sent events); polls every --interval where the server has none."""
    with o.connect(url, token, timeout) as c, ProgressBar(job_progress) as bar:
        done = c.wait_job(
            job, interval=interval, timeout=wait_timeout, on_update=None if quiet else bar, stream=not poll
        )
    print_json(done)
    # the last line a person sees (stderr, so stdout stays one JSON document): the verdict or the error
    verdict, error = done.get("verdict") or {}, done.get("error") or {}
    if verdict.get("text"):
        say(verdict["text"])
    elif error:
        say(f"{done['status']}: {error.get('code', 'error')}: {error.get('message', '')}")
    else:
        say(done["status"])
    if done["status"] != "succeeded":
        raise typer.Exit(1)


@app.command("get")
def get(job: JobId, url: o.Url = None, token: o.Token = None, timeout: o.Timeout = 300.0) -> None:
    """Print a job (status, progress, metrics, verdict, error) as JSON."""
    with o.connect(url, token, timeout) as c:
        print_json(c.get_job(job))


@app.command("cancel")
def cancel(job: JobId, url: o.Url = None, token: o.Token = None, timeout: o.Timeout = 300.0) -> None:
    """Cancel a queued or running job."""
    with o.connect(url, token, timeout) as c:
        print_json(c.cancel_job(job))


@app.command("events")
def events(
    job: JobId,
    after: Annotated[
        int | None,
        typer.Option(
            metavar="EVENT_ID", help="only events after this event id (the next_cursor of the previous page)"
        ),
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="events per page (1-1000)")] = 100,
    all_pages: Annotated[bool, typer.Option("--all", help="follow next_cursor until the last event")] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="print every event as it happens, one JSON object a line, until the job is finished "
            "(--after is then an event seq)",
        ),
    ] = False,
    url: o.Url = None,
    token: o.Token = None,
    timeout: o.Timeout = 300.0,
) -> None:
    """Print a job's events as JSON, oldest first (one page, or every page with --all, or each as it
    happens with --follow)."""
    with o.connect(url, token, timeout) as c:
        if follow:
            for event in c.stream_job_events(job, after=after):
                sys.stdout.write(json.dumps(event, default=str) + "\n")
                sys.stdout.flush()
            return
        if all_pages:
            found = c.list_job_events(job, after=after, page_size=limit)
            page = {"data": found, "has_more": False, "next_cursor": None}
        else:
            page = c.job_events(job, after=after, limit=limit)
    print_json(page)


@app.command("list")
def list_(
    status: Annotated[Status | None, typer.Option(help="only jobs in this state")] = None,
    dataset: Annotated[
        str | None, typer.Option(metavar="ID", help="only jobs on this dataset (ds_...)")
    ] = None,
    url: o.Url = None,
    token: o.Token = None,
    timeout: o.Timeout = 300.0,
) -> None:
    """List the project's jobs as JSON, newest first ({"data": [...], "has_more": false, "next_cursor": null})."""
    with o.connect(url, token, timeout) as c:
        print_list(c.list_jobs(status=status, dataset_id=dataset))


def download(
    job: JobId,
    name: Annotated[list[str] | None, typer.Option(help="artifact name (repeatable; default: all)")] = None,
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="folder (default: here)", show_default=False)
    ] = Path("."),
    url: o.Url = None,
    token: o.Token = None,
    timeout: o.Timeout = 300.0,
) -> None:
    """Download a job's artifacts (all or nothing); prints one path a line."""
    with o.connect(url, token, timeout) as c:
        print_lines(c.download_artifacts(job, out, name or None))


def register(root: typer.Typer) -> None:
    root.add_typer(app)
    root.command("download")(download)
