"""The job pipeline: one recovery job, end to end, as named stages (``run_job`` is the entry point).

claim (the message is a wake-up: the claim picks the job by fair share, ``mergetune.common.scheduling``)
-> load rows and inputs -> mergetune.core.method.recovery.recover -> export -> report -> artifacts ->
terminal status. Called by the Celery task (``mergetune.worker.tasks``) and by tests.

- :mod:`.run`: the orchestration (claim, stage order, cancellation, errors, resume, hand-back);
- :mod:`.job`: :class:`JobRun` (what the stages hand on) and the job's storage keys;
- :mod:`.inputs`: job rows and hyperparameters, checkpoint tensors and backbone, datasets and split;
- :mod:`.training`: train and evaluate, and the callbacks the core calls (progress, cancel, epoch state);
- :mod:`.artifacts`: export the prompts or head, upload the artifacts and mark the job succeeded;
- :mod:`.report`: manifest.json, report.json, report.html and curves.png;
- :mod:`.mma`: the MMA branch of the inputs, training and export stages.

Idempotent by construction:

- a job in a terminal status is never rerun (the task returns at once and the message is acknowledged);
- a job still owned by a live worker (fresh heartbeat running that job) is skipped;
- a job that was running on a worker that died resumes from ``jobs/<id>/state/epoch.pt`` (the epoch state
  saved by ``on_epoch_end``), so a resumed run ends with the same prompts as an uninterrupted one;
- artifacts are uploaded under fixed keys (``jobs/<id>/<name>``, overwritten on a rerun) and their rows
  are replaced in the same transaction that marks the job succeeded: exactly one set per job.

Progress goes to Postgres at most once a second (plus every epoch end), the cancel flag is re-read at most
every 0.5 s; each write is its own short transaction (``mergetune.worker.jobdb``).
"""

from mergetune.worker.pipeline.job import JobRun, job_prefix, state_key
from mergetune.worker.pipeline.run import run_job
from mergetune.worker.pipeline.training import JobCallbacks

__all__ = ["JobCallbacks", "JobRun", "job_prefix", "run_job", "state_key"]
