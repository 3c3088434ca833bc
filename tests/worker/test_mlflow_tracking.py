"""MLflow tracking against a real ``mlflow server`` (SQLite backend, local artifact root) started here:
a job logs one run (every resolved hyperparameter and the input hashes as parameters, per-epoch loss
and validation metrics, the final accuracies, the verdict as tags, the report and prompt files),
read back through MLflow's own client; a tracking server that is down does not fail the job, and the
data buffered while it is down reaches it once it answers."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import worker_support as ws
from sqlalchemy import select, update

from mergetune.common.db import session_scope
from mergetune.common.models import Checkpoint, Dataset, Job, JobEvent
from mergetune.worker import pipeline

pytest.importorskip("mlflow.server", reason="the mlflow server is installed by the dev extra")
from mlflow.tracking import MlflowClient  # noqa: E402

HOST = "mlflow@test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [
                str(mlflow) if mlflow.exists() else shutil.which("mlflow") or "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "server.log", "ab"),  # noqa: SIM115 - lives as long as the process
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "mlflow").mkdir()
    srv = Server(tmp_path / "mlflow", free_port())
    yield srv
    srv.stop()


def _track(url: str, job_id: str, uri: str, experiment: str) -> None:
    with session_scope(url) as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(mlflow={"tracking_uri": uri, "experiment": experiment})
        )


def _events(url: str, job_id: str, type_: str) -> list[JobEvent]:
    """The job's events of this type, oldest first. Without ORDER BY, Postgres returns rows in their
    physical order, which on the shared worker database (rows of earlier tests deleted, space reused)
    is not the order they were written in."""
    with session_scope(url) as s:
        query = (
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == type_).order_by(JobEvent.id)
        )
        rows = list(s.scalars(query))
        s.expunge_all()
        return rows


def test_a_job_logs_one_run_read_back_through_mlflow(wsettings, store, rows, server, tmp_path):
    server.start()
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds, epochs=3)
    _track(url, job_id, server.uri, "recovery-tests")
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded"
    job = ws.job_row(url, job_id)
    conf = job["mlflow"]
    assert conf["run_url"] == f"{server.uri}/#/experiments/{conf['experiment_id']}/runs/{conf['run_id']}"
    assert _events(url, job_id, "mlflow_unavailable") == []

    client = MlflowClient(tracking_uri=server.uri)
    exp = client.get_experiment_by_name("recovery-tests")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [conf["run_id"]]  # one run per job
    run = client.get_run(conf["run_id"])
    assert run.info.status == "FINISHED"
    with session_scope(url) as s:
        ck_sha = s.get(Checkpoint, ck).sha256
        split_sha = s.get(Dataset, ds).sha256_of_split
    p = run.data.params
    for k, v in job["hyperparameters"].items():
        if not isinstance(v, dict) and v is not None:
            assert p[f"hp.{k}"] == str(v), k
    assert (p["hp.epochs"], p["checkpoint.sha256"], p["dataset.split_sha256"], p["protocol"]) == (
        "3",
        ck_sha,
        split_sha,
        "base2novel",
    )
    assert p["backbone.model"] == job["backbone"]["model"]
    # per-epoch metrics with their history, one value per epoch
    history = client.get_metric_history(conf["run_id"], "loss")
    assert [m.step for m in history] == [1, 2, 3]
    epoch_events = sorted(_events(url, job_id, "epoch"), key=lambda e: e.data["epoch"])
    assert [round(m.value, 6) for m in history] == [round(e.data["record"]["loss"], 6) for e in epoch_events]
    # final accuracies equal the job's metrics
    m = run.data.metrics
    for phase in ("zero_shot", "fine_tuned", "recovered"):
        for split in ("base", "novel", "hm"):
            assert m[f"{phase}.{split}"] == pytest.approx(job["metrics"][phase][split]), (phase, split)
    t = run.data.tags
    assert t["verdict.ok"] == str(job["verdict"]["ok"]) and t["verdict.text"] == job["verdict"]["text"]
    assert (t["mergetune.job_id"], t["mergetune.outcome"]) == (job_id, "succeeded")
    names = {a.path for a in client.list_artifacts(conf["run_id"])}
    assert {"report.json", "prompts.safetensors", "prompts.pth.tar"} <= names, names
    got = client.download_artifacts(conf["run_id"], "report.json", str(tmp_path))
    assert json.loads(Path(got).read_text())["job_id"] == job_id
    print(
        "MLflow run:",
        json.dumps(
            {
                "run_id": conf["run_id"],
                "status": run.info.status,
                "params": len(p),
                "metrics": dict(sorted(m.items())),
                "loss history": [(h.step, round(h.value, 4)) for h in history],
                "tags": {k: v for k, v in sorted(t.items()) if not k.startswith("mlflow.")},
                "artifacts": sorted(names),
            },
            indent=1,
        ),
    )


def test_a_server_that_is_down_never_fails_the_job_and_gets_the_data_later(wsettings, store, rows, server):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    # Down for the whole job: the job succeeds, with warnings and no run. The port stays bound (not
    # listening) meanwhile, so connections are refused and no other socket can take it, not even a
    # client's own ephemeral end connecting to itself.
    job_id = ws.make_job(url, project, ck, ds, epochs=2)
    _track(url, job_id, server.uri, "down")
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", server.port))
    try:
        assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded"
    finally:
        reserved.close()
    warned = _events(url, job_id, "mlflow_unavailable")
    assert [e.level for e in warned] == ["warning", "warning"], [e.message for e in warned]
    assert "not sent: " in warned[-1].message and "artifact report.json" in warned[-1].message
    assert "run_id" not in ws.job_row(url, job_id)["mlflow"]

    # Down when the job starts, up again after its second epoch (a proxy in front of the server that
    # drops connections while down): what was buffered arrives, in one run.
    server.start()
    proxy = Proxy(server.port)
    job_id = ws.make_job(url, project, ck, ds, epochs=6)
    _track(url, job_id, proxy.uri, "late")

    def up_after_two_epochs() -> None:
        ws.wait_for(lambda: len(_events(url, job_id, "epoch")) >= 2, 120, 0.01, "epoch 2")
        proxy.up = True

    t = threading.Thread(target=up_after_two_epochs)
    t.start()
    try:
        assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded"
    finally:
        t.join()
        proxy.close()
    job = ws.job_row(url, job_id)
    warned = _events(url, job_id, "mlflow_unavailable")
    assert len(warned) == 1 and proxy.refused >= 1, [e.message for e in warned]
    assert any("answers again" in e.message for e in _events(url, job_id, "mlflow"))
    client = MlflowClient(tracking_uri=server.uri)
    run = client.get_run(job["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["hp.epochs"] == "6"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, 7))
    assert run.data.metrics["recovered.hm"] == pytest.approx(job["metrics"]["recovered"]["hm"])
    assert "report.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_cancelled_job_ends_its_run_killed(wsettings, store, rows, server):
    server.start()
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds, epochs=50, batch_size=1)
    _track(url, job_id, server.uri, "cancelled")

    def cancel_after_two_epochs() -> None:
        ws.wait_for(lambda: len(_events(url, job_id, "epoch")) >= 2, 120, 0.01, "epoch 2")
        with session_scope(url) as s:
            s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True, status="cancelling"))

    t = threading.Thread(target=cancel_after_two_epochs)
    t.start()
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "cancelled"
    t.join()
    client = MlflowClient(tracking_uri=server.uri)
    run = client.get_run(ws.job_row(url, job_id)["mlflow"]["run_id"])
    assert (run.info.status, run.data.tags["mergetune.outcome"]) == ("KILLED", "cancelled")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps[:2] == [1, 2] and steps == list(range(1, len(steps) + 1)) and len(steps) < 50
    assert "recovered.hm" not in run.data.metrics


class _Crash(BaseException):
    """Stands in for a killed worker: not an Exception, so the pipeline records nothing and re-raises."""


def test_a_resumed_job_logs_into_the_same_run(wsettings, store, rows, server, monkeypatch):
    server.start()
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds, epochs=4)
    _track(url, job_id, server.uri, "resumed")
    real_epoch_end = pipeline.JobCallbacks.on_epoch_end

    def crash_after_two(self, state):
        real_epoch_end(self, state)
        if state["epoch"] == 2:
            raise _Crash()

    monkeypatch.setattr(pipeline.JobCallbacks, "on_epoch_end", crash_after_two)
    with pytest.raises(_Crash):
        pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store)
    monkeypatch.setattr(pipeline.JobCallbacks, "on_epoch_end", real_epoch_end)
    client = MlflowClient(tracking_uri=server.uri)
    run_id = ws.job_row(url, job_id)["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"  # handed back: open for the next attempt

    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded"
    assert ws.job_row(url, job_id)["mlflow"]["run_id"] == run_id
    exp = client.get_experiment_by_name("resumed")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["hp.epochs"] == "4"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]


class Proxy:
    """TCP forwarding to the MLflow server that closes every connection at once while ``up`` is False."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.up, self.refused = target_port, False, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                self.refused += 1
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
