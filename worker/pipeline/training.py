"""The train and evaluate stages, and the callbacks the core calls while training (progress, cancel,
epoch state), throttled against the database."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from mergetune.common.models import utcnow
from mergetune.common.storage import ArtifactStore, LocalStore
from mergetune.worker import jobdb, mlflow_tracking
from mergetune.worker.pipeline import mma
from mergetune.worker.pipeline.job import JobRun, state_key

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 1.0  # seconds between progress writes
RECENT_EPOCHS = 20  # measured epoch durations kept in the job's progress (the estimate's pace)
CANCEL_CHECK_EVERY = 0.5  # seconds between reads of jobs.cancel_requested


class JobCallbacks:
    """on_progress / should_stop / on_epoch_end for one job, throttled against the database."""

    def __init__(
        self,
        url: str,
        job_id: str,
        store: ArtifactStore,
        epochs: int,
        clock: Any = time.monotonic,
        hostname: str | None = None,
        attempt: int | None = None,
        deadline: float | None = None,
    ):
        self.url, self.job_id, self.store, self.epochs, self.clock = url, job_id, store, epochs, clock
        self.hostname, self.attempt = hostname, attempt
        #: A ``clock`` value: the job's max_runtime_seconds is reached then; should_stop says stop and
        #: ``timed_out`` is set (the pipeline ends the job ``timed_out``).
        self.deadline = deadline
        self.timed_out = False
        #: The last epoch whose state this run stored (0: none yet).
        self.saved_epoch = 0
        #: Set when another node took the job over (this node was presumed dead): stop without touching it.
        self.lost_ownership = False
        self._last_progress = float("-inf")
        self._last_cancel_check = float("-inf")
        self._cancel = False
        self._evaluating = False
        self.progress: dict[str, Any] = {}
        self.progress_writes = 0
        #: Wall seconds of each epoch this run finished and when the last one ended: reported in
        #: progress for the estimate. The first is timed from its first reported step and scaled to all
        #: its steps, so the setup before training is not counted as an epoch; later ones end to end.
        self.epoch_seconds: list[float] = []
        self._epoch_mark: float | None = None
        self._steps_before_mark = 0
        self._created = clock()
        self._epoch_done_at: str | None = None
        self._epochs_done = 0
        self.cancel_reads = 0
        self.tracker: mlflow_tracking.Tracker | None = None

    # core calls on_progress(epoch, step, loss, *, epochs, steps, ce, zs, lmc, lr), epoch/step 0-based;
    # the job's progress is 1-based ("epoch 3 of 10, step 2 of 5").
    def on_progress(self, epoch: int, step: int, loss: float, **info: Any) -> None:
        steps = info.get("steps")
        self.progress = {
            "epoch": int(epoch) + 1,
            "epochs": int(info.get("epochs") or self.epochs),
            "step": int(step) + 1,
            "steps": int(steps) if steps is not None else None,
            "loss": float(loss),
            **self._timing(),
        }
        now = self.clock()
        if self._epoch_mark is None:
            self._epoch_mark, self._steps_before_mark = now, int(step) + 1
        end_of_epoch = steps is not None and step + 1 >= steps
        if end_of_epoch or now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self.progress_writes += 1
            jobdb.write_progress(self.url, self.job_id, self.progress, self.hostname)

    def _timing(self) -> dict[str, Any]:
        """The measured epochs, once there is one: ``epoch_seconds`` (the last RECENT_EPOCHS),
        ``epochs_measured`` (all of this run), ``epochs_done`` (the last finished epoch, counting a
        resumed run's earlier ones) and ``epoch_done_at`` (when it ended, UTC ISO 8601)."""
        if not self.epoch_seconds:
            return {}
        return {
            "epoch_seconds": self.epoch_seconds[-RECENT_EPOCHS:],
            "epochs_measured": len(self.epoch_seconds),
            "epochs_done": self._epochs_done,
            "epoch_done_at": self._epoch_done_at,
        }

    def should_stop(self) -> bool:
        if self._cancel:
            return True
        now = self.clock()
        if self.deadline is not None and now >= self.deadline:
            self.timed_out = self._cancel = True
            return True
        if now - self._last_cancel_check >= CANCEL_CHECK_EVERY:
            self._last_cancel_check = now
            self.cancel_reads += 1
            cancel, owner = jobdb.stop_flags(self.url, self.job_id, self.attempt)
            if self.hostname is not None and owner != self.hostname:
                logger.warning("job %s: now owned by %s; stopping here", self.job_id, owner)
                self.lost_ownership = True
                cancel = True
            self._cancel = cancel
        return self._cancel

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        import torch

        if self.lost_ownership:
            return  # never overwrite the new owner's state

        epoch = int(state.get("epoch", self.progress.get("epoch", 0)))
        now = self.clock()
        seconds = max(0.0, now - (self._epoch_mark if self._epoch_mark is not None else self._created))
        steps = self.progress.get("steps")
        if not self.epoch_seconds:
            if isinstance(steps, int) and steps > self._steps_before_mark:
                seconds *= steps / (steps - self._steps_before_mark)  # the steps before the first report
            else:  # a one-step epoch: from the start of the stage, setup included
                seconds = max(0.0, now - self._created)
        seconds = round(seconds, 3)
        self._epoch_mark, self._steps_before_mark = now, 0
        self.epoch_seconds.append(seconds)
        self._epoch_done_at = utcnow().isoformat()
        self._epochs_done = epoch
        if self.progress:
            self.progress.update(self._timing())
        # the epoch's means: loss parts and validation accuracy (mergetune.core.evaluation.result.EpochLog)
        record = {k: v for k, v in ((state.get("history") or [{}])[-1]).items() if k != "epoch"}
        with tempfile.TemporaryDirectory(prefix="mergetune-state-") as tmp:
            path = Path(tmp) / "epoch.pt"
            torch.save(state, path)
            self.store.put_file(state_key(self.job_id), path)
        self.saved_epoch = epoch
        if self.progress:
            jobdb.write_progress(self.url, self.job_id, self.progress, self.hostname)
        jobdb.add_event(
            self.url,
            self.job_id,
            "epoch",
            f"Epoch {epoch}/{self.epochs} done"
            + (f", loss {self.progress['loss']:.4f}" if self.progress else ""),
            epoch=epoch,
            epochs=self.epochs,
            loss=self.progress.get("loss"),
            record=record,
            seconds=seconds,
        )
        mlflow_tracking.epoch_end(self.tracker, epoch, record)
        if epoch >= self.epochs and not self._evaluating:
            self._evaluating = True
            jobdb.set_evaluating(self.url, self.job_id)


def _backfill_epoch_events(url: str, job_id: str, state: dict[str, Any], epochs: int) -> None:
    """An epoch's state is stored before its event is written, so a worker killed between the two leaves
    that event missing; the resumed run starts after the epoch. Write it from the state's history."""
    logged = jobdb.logged_epochs(url, job_id)
    history = state.get("history", [])
    for epoch in range(1, int(state.get("epoch", 0)) + 1):
        if epoch in logged:
            continue
        loss = history[epoch - 1].get("loss") if epoch - 1 < len(history) else None
        jobdb.add_event(
            url,
            job_id,
            "epoch",
            f"Epoch {epoch}/{epochs} done" + (f", loss {loss:.4f}" if loss is not None else ""),
            epoch=epoch,
            epochs=epochs,
            loss=loss,
        )


def _load_resume_state(store: ArtifactStore, job_id: str) -> dict[str, Any] | None:
    key = state_key(job_id)
    if not store.exists(key):
        return None
    import torch

    path = store.local_path(key)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt state (killed mid-upload) means: start over
        logger.warning("job %s: unreadable resume state, starting from scratch", job_id, exc_info=True)
        return None
    finally:
        if not isinstance(store, LocalStore):  # a temporary download; LocalStore gives the stored file
            path.unlink(missing_ok=True)


def stage_train(run: JobRun) -> None:
    """Resume from the last epoch state (a rerun after a lost worker), then train (the core also
    evaluates at the end of training).

    Retry: every epoch end stores ``jobs/<id>/state/epoch.pt`` before logging its event, so a run that
    dies here resumes at the last stored epoch; a missing epoch event is backfilled from that state.
    Failure: ``Cancelled`` at any step (cancel flag, or another node took the job over)."""
    import torch

    from mergetune.core.errors import Cancelled
    from mergetune.core.method.recovery import recover

    url, job_id, hp, claim = run.url, run.job_id, run.hp, run.claim
    resume_state = _load_resume_state(run.store, job_id) if claim.resumed else None
    source = run.job.get("resume_from_job_id")
    if resume_state is None and source:
        # a clone of a timed-out job: start from its last epoch state, stored under this job from now on
        resume_state = _load_resume_state(run.store, source)
        if resume_state is not None:
            jobdb.add_event(
                url,
                job_id,
                "resume",
                f"Starting from epoch {int(resume_state.get('epoch', 0))} of job {source} (timed out)",
                epoch=int(resume_state.get("epoch", 0)),
                source_job=source,
            )
    run.resumed_from = int(resume_state.get("epoch", 0)) if resume_state else 0
    if resume_state:
        _backfill_epoch_events(url, job_id, resume_state, hp.epochs)
    if claim.resumed:
        jobdb.add_event(
            url,
            job_id,
            "resume",
            f"Resuming from epoch {run.resumed_from}"
            if resume_state
            else "No saved epoch state; starting over",
            epoch=run.resumed_from,
        )
    limit = run.job.get("max_runtime_seconds")
    cb = run.cb = JobCallbacks(
        url,
        job_id,
        run.store,
        hp.epochs,
        hostname=run.hostname,
        attempt=claim.attempt,
        deadline=run.t0 + float(limit) - claim.previous_seconds if limit else None,
    )
    if claim.resumed and resume_state is not None:
        cb.saved_epoch = run.resumed_from  # its own state, kept if it times out before a new epoch
    if cb.should_stop():
        raise Cancelled("cancelled before training started")
    cb.tracker = run.tracker = mlflow_tracking.start(run)

    torch.manual_seed(hp.seed)
    t = time.monotonic()
    if mma.is_mma(run.method):
        run.output = mma.train(run, resume_state)
        run.timings["recover"] = time.monotonic() - t
        return
    run.output = recover(
        run.backbone,
        run.task,
        run.ctx_ft,
        hp,
        method=run.method,
        spec=run.prompt_spec,
        on_progress=cb.on_progress,
        should_stop=cb.should_stop,
        resume_state=resume_state,
        on_epoch_end=cb.on_epoch_end,
        extra_datasets=run.extra_datasets,
    )
    run.timings["recover"] = time.monotonic() - t


def stage_evaluate(run: JobRun) -> None:
    """Re-read the cancel flag once more, mark the job ``evaluating`` and take the core's results.

    Failure: ``Cancelled`` when a cancel came in during the last steps."""
    from mergetune.core.errors import Cancelled

    cb = run.cb
    assert cb is not None
    cb.deadline = None  # the deadline bounds the training; its results are evaluated and kept
    cb._last_cancel_check = float("-inf")
    if cb.should_stop():
        raise Cancelled("cancelled after training")
    jobdb.set_evaluating(run.url, run.job_id)
    run.result_json = run.output.result.model_dump(mode="json")
