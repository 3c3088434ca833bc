"""MLflow tracking of a job: one run per job in the job's (or its project's) experiment, with every
resolved hyperparameter and input hash as parameters, each epoch's loss parts and validation accuracy
as metrics while it trains, the final accuracies, the verdict as tags, and the report and recovered
prompts as artifacts.

The MLflow client (``pip install 'mergetune[mlflow]'``, mlflow-skinny) is optional. A tracking server
that does not answer never fails a job: what could not be sent stays buffered in order (a
``mlflow_unavailable`` warning event says so, once per outage) and is replayed at the next epoch and
at the end of the job; what is still unsent when the job ends is named in a last warning event.
The run id and its link are written into ``jobs.mlflow`` once the run exists, so a resumed job logs
into the same run."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from mergetune.common.db import is_unavailable, session_scope
from mergetune.common.models import Job
from mergetune.common.storage import is_storage_full
from mergetune.worker import jobdb

logger = logging.getLogger(__name__)

#: MLflow's own HTTP client retries for minutes by default; the job must not wait on it: one try with
#: a short timeout, the buffer retries later.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
ARTIFACTS = (
    "report.json",
    "report.html",
    "curves.png",
    "prompts.safetensors",
    "prompts.pth.tar",
    "prompts-coop.tar",
    "head.safetensors",
)
PARAM_MAX = 6000  # MLflow's limit on a parameter value
TAG_MAX = 5000
BATCH = 100  # parameters per log_batch call

Op = tuple[str, Callable[[Any, str], None]]


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI (http(s) tracking servers only)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``a.b`` keys; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    out[prefix.rstrip(".")] = value
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class Tracker:
    """One job's MLflow run; every call is buffered and replayed in order until the server takes it."""

    def __init__(self, url: str, job_id: str, conf: dict[str, Any], run_name: str) -> None:
        for k, v in CLIENT_ENV.items():
            os.environ.setdefault(k, v)
        from mlflow.tracking import MlflowClient

        self.url, self.job_id, self.run_name = url, job_id, run_name
        self.tracking_uri = str(conf["tracking_uri"])
        self.experiment = str(conf.get("experiment") or "mergetune")
        self.experiment_id: str | None = conf.get("experiment_id")
        self.run_id: str | None = conf.get("run_id")
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.pending: list[Op] = []
        self.down_since: float | None = None
        self.sent = 0

    # ----------------------------------------------------------------------------------- the buffer

    def _ensure_run(self) -> str:
        if self.run_id is not None:
            return self.run_id
        if self.experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            self.experiment_id = (
                exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment)
            )
        run = self.client.create_run(
            self.experiment_id, run_name=self.run_name, tags={"mergetune.job_id": self.job_id}
        )
        self.run_id = run.info.run_id
        link = run_url(self.tracking_uri, self.experiment_id, self.run_id)
        with session_scope(self.url) as s:
            job = s.scalar(select(Job).where(Job.id == self.job_id))
            if job is not None:
                job.mlflow = {
                    **(job.mlflow or {}),
                    "experiment_id": self.experiment_id,
                    "run_id": self.run_id,
                    "run_url": link,
                }
        jobdb.add_event(
            self.url,
            self.job_id,
            "mlflow",
            f"MLflow run {self.run_id} in experiment {self.experiment!r} at {self.tracking_uri}",
            run_id=self.run_id,
            experiment_id=self.experiment_id,
            run_url=link,
        )
        return self.run_id

    def add(self, what: str, op: Callable[[Any, str], None]) -> None:
        self.pending.append((what, op))

    def flush(self) -> bool:
        """Send what is buffered, in order; False (and a warning event once per outage) when the
        server does not take it."""
        try:
            run_id = self._ensure_run()
            while self.pending:
                self.pending[0][1](self.client, run_id)
                self.pending.pop(0)
                self.sent += 1
        except Exception as exc:  # noqa: BLE001 - any failure of the tracking server: buffer and retry later
            if self.down_since is None:
                self.down_since = time.monotonic()
                logger.warning("job %s: MLflow at %s: %s", self.job_id, self.tracking_uri, exc)
                jobdb.add_event(
                    self.url,
                    self.job_id,
                    "mlflow_unavailable",
                    f"MLflow tracking server {self.tracking_uri} did not take the run's data "
                    f"({type(exc).__name__}: {str(exc)[:300]}); it is kept and sent again at the next "
                    "epoch and at the end of the job",
                    "warning",
                    pending=len(self.pending),
                )
            return False
        if self.down_since is not None:
            jobdb.add_event(
                self.url,
                self.job_id,
                "mlflow",
                f"MLflow tracking server {self.tracking_uri} answers again: the buffered data was sent",
            )
            self.down_since = None
        return True

    # ------------------------------------------------------------------------------------- what is logged

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:PARAM_MAX]) for k, v in sorted(params.items()) if v is not None]
        for i in range(0, len(items), BATCH):
            self.add("parameters", _batch(params=items[i : i + BATCH]))

    def log_metrics(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(k, v, now, step)
            for k, v in ((k, _number(v)) for k, v in sorted(values.items()))
            if v is not None
        ]
        if metrics:
            self.add(f"metrics of step {step}", _batch(metrics=metrics))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:TAG_MAX]) for k, v in sorted(tags.items()) if v is not None]
        if items:
            self.add("tags", _batch(tags=items))

    def log_artifact(self, path: Any) -> None:
        self.add(f"artifact {path.name}", lambda c, r: c.log_artifact(r, str(path)))

    def terminate(self, status: str) -> None:
        self.add(f"run status {status}", lambda c, r: c.set_terminated(r, status=status))


def _batch(**batch: Any) -> Callable[[Any, str], None]:
    """One ``log_batch`` call with these metrics / params / tags."""

    def send(client: Any, run_id: str) -> None:
        client.log_batch(run_id, **batch)

    return send


# ------------------------------------------------------------------------------------ the pipeline's hooks


def start(run: Any) -> Tracker | None:
    """The job's tracker with its parameters sent (or buffered), or None when the job logs nowhere."""
    conf = run.job.get("mlflow") or {}
    if not conf.get("tracking_uri"):
        return None
    try:
        tracker = Tracker(run.url, run.job_id, conf, run_name=run.job.get("name") or run.job_id)
    except ImportError:
        jobdb.add_event(
            run.url,
            run.job_id,
            "mlflow_unavailable",
            "This worker has no MLflow client (pip install 'mergetune[mlflow]'): the job is not tracked",
            "warning",
        )
        return None
    hp = run.hp.model_dump(mode="json") if run.hp is not None else {}
    spec = (
        run.spec.model_dump(mode="json")
        if hasattr(run.spec, "model_dump")
        else (run.job.get("backbone") or {})
    )
    params: dict[str, Any] = {
        **{f"hp.{k}": v for k, v in flatten(hp).items()},
        **{f"backbone.{k}": v for k, v in flatten(spec).items()},
        "checkpoint.id": run.ck.get("id"),
        "checkpoint.sha256": run.ck.get("sha256"),
        "checkpoint.method": run.ck.get("method"),
        "dataset.id": run.ds_row.get("id"),
        "dataset.name": run.ds_row.get("name"),
        "dataset.split_sha256": run.ds_row.get("sha256_of_split"),
        "dataset.task_sha256": run.task_sha,
        "protocol": run.protocol,
        "job_type": run.job.get("job_type"),
    }
    tracker.log_params(params)
    tracker.set_tags({"mergetune.job_id": run.job_id, "mergetune.project_id": run.job.get("project_id")})
    tracker.flush()
    return tracker


def epoch_end(tracker: Tracker | None, epoch: int, record: dict[str, Any]) -> None:
    """One epoch's means (loss parts, validation accuracy) at step ``epoch``; replays the buffer."""
    if tracker is None:
        return
    tracker.log_metrics(flatten(record), step=epoch)
    tracker.flush()


def finish(run: Any) -> None:
    """The final accuracies, the verdict as tags, the report and prompt files; the run ends FINISHED.
    Never raises: what the server still refuses is named in a warning event."""
    tracker: Tracker | None = getattr(run, "tracker", None)
    if tracker is None:
        return
    metrics = run.result_json.get("metrics") or {}
    tracker.log_metrics(flatten(metrics), step=int(run.hp.epochs) if run.hp is not None else 0)
    verdict = run.result_json.get("verdict") or {}
    if verdict:
        tags = {f"verdict.{k}": v for k, v in verdict.items() if k != "warnings"}
        tags["verdict.warnings"] = (
            ",".join(str(w.get("code")) for w in verdict.get("warnings") or []) or "none"
        )
        tracker.set_tags(tags)
    tracker.set_tags({"mergetune.outcome": "succeeded"})
    for name in ARTIFACTS:
        path = run.files.get(name)
        if path is not None and path.is_file():
            tracker.log_artifact(path)
    tracker.terminate("FINISHED")
    for delay in (0.0, 1.0, 3.0):  # the last chances: the files go with the work directory
        time.sleep(delay)
        if tracker.flush():
            return
    jobdb.add_event(
        run.url,
        run.job_id,
        "mlflow_unavailable",
        f"MLflow tracking server {tracker.tracking_uri} still does not answer at the end of the job: "
        f"not sent: {', '.join(what for what, _ in tracker.pending)}",
        "warning",
        pending=len(tracker.pending),
    )


def stopped(run: Any, exc: BaseException) -> None:
    """A job that ends without finishing: its run ends KILLED (cancelled, timed out) or FAILED, with a
    ``mergetune.outcome`` tag. A job handed back to resume later (database or disk gone, worker stopped)
    or taken over by another node keeps its run open for the attempt that continues it. Never raises."""
    tracker: Tracker | None = getattr(run, "tracker", None)
    if tracker is None or (run.cb is not None and run.cb.lost_ownership):
        return
    from mergetune.core.errors import Cancelled

    if isinstance(exc, Cancelled):
        timed_out = bool(getattr(run.cb, "timed_out", False))
        status, outcome = "KILLED", "timed_out" if timed_out else "cancelled"
    elif isinstance(exc, Exception) and not is_unavailable(exc) and not is_storage_full(exc):
        status, outcome = "FAILED", "failed"
    else:
        return
    try:
        tracker.set_tags({"mergetune.outcome": outcome})
        tracker.terminate(status)
        tracker.flush()
    except Exception:  # noqa: BLE001 - tracking never changes how a job ends
        logger.warning("job %s: MLflow run not ended", run.job_id, exc_info=True)
