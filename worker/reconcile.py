"""The reconciler: Postgres is the record of truth, and every job in it converges.

Every ``RECONCILE_INTERVAL`` seconds one pass (:func:`reconcile_once`):

1. requeues active jobs whose worker died (stale heartbeat, or a restarted node no longer running them:
   :func:`mergetune.worker.jobdb.requeue_orphans`);
2. requeues active jobs whose progress stamp is older than ``RECONCILE_STALL_TIMEOUT``, even when their
   worker's heartbeat is fresh (a worker stuck, or one that gave the job up while the database was down:
   :func:`mergetune.worker.jobdb.requeue_stalled`); that ends the old owner's lease;
3. re-enqueues ``queued`` jobs whose broker message is gone (a Redis restarted without persistence, a
   purged queue, an enqueue that failed after the commit), once they have waited
   ``RECONCILE_QUEUE_GRACE`` seconds since their last message. The broker is inspected for the job's
   message (Redis: the queue lists and the ``unacked`` hash; the filesystem broker: its queue folder);
   on a broker that cannot be inspected this step is skipped. Messages are wake-ups (the claim runs
   whichever job fair share picks), so a waiting message whose own job no longer waits counts for one
   of the jobs without a message;
4. on Redis, deletes ``unacked`` entries left by a dead delivery: the job finished, or was requeued
   (and a new message sent) after that delivery. Otherwise kombu would restore them only after the
   visibility timeout (24 h) and a worker would pick up a message with nothing to do;
5. retention: the finished jobs of projects with ``retention_days`` that finished longer ago lose their
   stored files and become ``expired`` (:func:`mergetune.common.lifecycle.expire_jobs`).

Requeues are idempotent: every change is a conditional UPDATE on what was read, a job runs at most once
at a time (the claim in :func:`mergetune.worker.jobdb.claim_job` is a compare-and-set), and a duplicate message is
harmless (the worker skips a finished job or one a live worker owns). A resumed job continues from its
last epoch state.

Run it as ``mergetune reconcile`` (docker-compose's ``reconciler`` service); ``mergetune serve
--embedded`` runs it in a thread. Several reconcilers may run at once. Its process also runs the
webhook dispatcher (:mod:`mergetune.worker.webhooks`) in a thread of its own.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mergetune.common.lifecycle import expire_jobs
from mergetune.common.models import TERMINAL_STATUSES, utcnow
from mergetune.common.queue import enqueue_job
from mergetune.common.settings import Settings
from mergetune.common.storage import get_store
from mergetune.common.tasks import JOBS_QUEUE, RUN_JOB
from mergetune.worker import jobdb, webhooks

logger = logging.getLogger(__name__)

_TERMINAL = {s.value for s in TERMINAL_STATUSES}
#: kombu's Redis transport: priority queues are ``<queue>`` and ``<queue>\x06\x16<priority>``.
_REDIS_PRIORITY_SEP = "\x06\x16"


@dataclass
class ReconcileReport:
    orphaned: list[str] = field(default_factory=list)  # requeued: worker dead
    stalled: list[str] = field(default_factory=list)  # requeued: no progress within the stall timeout
    lost: list[str] = field(default_factory=list)  # queued without a broker message: re-enqueued
    swept: int = 0  # stale unacked broker entries removed
    expired: dict[str, Any] = field(default_factory=dict)  # job id -> Freed (retention)
    errors: list[str] = field(default_factory=list)

    def changed(self) -> bool:
        return bool(self.orphaned or self.stalled or self.lost or self.swept or self.expired)


# -- the broker's view --------------------------------------------------------------------------------
def _job_id_of(payload: Any) -> str | None:
    """The job id a kombu message payload (dict or JSON text) carries, if it is a RUN_JOB message."""
    try:
        if isinstance(payload, bytes | str):
            payload = json.loads(payload)
        if isinstance(payload, list):  # the unacked hash stores [payload, exchange, routing_key]
            payload = payload[0]
            if isinstance(payload, str):
                payload = json.loads(payload)
        headers = payload.get("headers") or {}
        if headers.get("task") not in (None, RUN_JOB):
            return None
        body = payload.get("body")
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0] if body else None  # task protocol 2: [args, kwargs, embed]
        if isinstance(args, list) and args and isinstance(args[0], str):
            return args[0]
    except Exception:  # noqa: BLE001 - a foreign or corrupt message is not ours to judge
        return None
    return None


def _redis_client(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(settings.BROKER_URL, socket_timeout=5, socket_connect_timeout=5)


def _redis_keys(settings: Settings) -> tuple[str, str, str]:
    opts = settings.broker_transport_options()
    prefix = str(opts.get("global_keyprefix", ""))
    return (
        prefix,
        prefix + str(opts.get("unacked_key", "unacked")),
        prefix + str(opts.get("unacked_index_key", "unacked_index")),
    )


def broker_messages(settings: Settings) -> tuple[list[str], set[str]] | None:
    """The job ids the broker's messages name: (waiting in the queue, one per message; delivered and
    unacknowledged); None when this broker cannot be inspected."""
    url = settings.BROKER_URL
    waiting: list[str] = []
    if url.startswith(("redis://", "rediss://")):
        prefix, unacked, _index = _redis_keys(settings)
        r = _redis_client(settings)
        delivered: set[str] = set()
        queues = [prefix + JOBS_QUEUE]
        queues += [k.decode() for k in r.scan_iter(match=f"{prefix}{JOBS_QUEUE}{_REDIS_PRIORITY_SEP}*")]
        for q in queues:
            for raw in r.lrange(q, 0, -1):
                if (job_id := _job_id_of(raw)) is not None:
                    waiting.append(job_id)
        for raw in r.hvals(unacked):
            if (job_id := _job_id_of(raw)) is not None:
                delivered.add(job_id)
        return waiting, delivered
    if url.startswith("filesystem://"):
        for path in settings.queue_dir.glob(f"*.{JOBS_QUEUE}.msg"):
            try:
                job_id = _job_id_of(path.read_bytes())
            except OSError:  # consumed meanwhile
                continue
            if job_id is not None:
                waiting.append(job_id)
        return waiting, set()
    return None


def broker_job_ids(settings: Settings) -> set[str] | None:
    """Ids of the jobs that have a message in the broker (waiting or delivered and unacknowledged);
    None when this broker cannot be inspected."""
    found = broker_messages(settings)
    return None if found is None else set(found[0]) | found[1]


def sweep_unacked(settings: Settings, *, slack: float = 1.0) -> int:
    """Delete Redis ``unacked`` entries of dead deliveries (see the module docstring); the count."""
    if not settings.BROKER_URL.startswith(("redis://", "rediss://")):
        return 0
    _prefix, unacked, index = _redis_keys(settings)
    r = _redis_client(settings)
    entries: dict[str, str] = {}
    for tag, raw in r.hgetall(unacked).items():
        if (job_id := _job_id_of(raw)) is not None:
            entries[tag.decode()] = job_id
    if not entries:
        return 0
    states = jobdb.job_states(settings.DATABASE_URL, sorted(set(entries.values())))
    removed = 0
    for tag, job_id in entries.items():
        status, enqueued_at = states.get(job_id, ("missing", None))
        delivered = r.zscore(index, tag)
        stale = status in _TERMINAL or status == "missing"
        if not stale and enqueued_at is not None and delivered is not None:
            stale = enqueued_at > datetime.fromtimestamp(float(delivered), UTC) + timedelta(seconds=slack)
        if stale:
            r.hdel(unacked, tag)
            r.zrem(index, tag)
            removed += 1
            logger.info("removed the stale broker entry of job %s (%s)", job_id, status)
    return removed


# -- one pass -----------------------------------------------------------------------------------------
def reconcile_once(settings: Settings, *, now: datetime | None = None) -> ReconcileReport:
    url = settings.DATABASE_URL
    now = now or utcnow()
    rep = ReconcileReport()

    def send(ids: list[str], what: str) -> None:
        for job_id in ids:
            try:
                enqueue_job(settings, job_id)
            except Exception as exc:  # noqa: BLE001 - the job is queued in Postgres: a later pass resends
                logger.warning("could not enqueue %s job %s: %s", what, job_id, exc)
                rep.errors.append(f"enqueue {job_id}: {type(exc).__name__}")

    rep.orphaned = jobdb.requeue_orphans(url, now=now)
    send(rep.orphaned, "orphaned")
    rep.stalled = jobdb.requeue_stalled(url, settings.RECONCILE_STALL_TIMEOUT, now=now)
    send(rep.stalled, "stalled")

    waiting = jobdb.queued_jobs(url, enqueued_before=now - timedelta(seconds=settings.RECONCILE_QUEUE_GRACE))
    if waiting:
        try:
            found = broker_messages(settings)
        except Exception as exc:  # noqa: BLE001 - broker down: nothing to compare with; next pass
            logger.warning("cannot inspect the broker: %s", exc)
            rep.errors.append(f"broker: {type(exc).__name__}")
            found = None
        if found is not None:
            present = set(found[0]) | found[1]
            missing = [job_id for job_id in waiting if job_id not in present]
            # A message is a wake-up (the claim takes whichever job fair share picks): a waiting message
            # whose own job no longer waits (it ran through another message, or finished) will start one
            # of the queued jobs, so only the queued jobs beyond those spare wake-ups are lost.
            states = jobdb.job_states(url, sorted(set(found[0]))) if missing else {}
            spare = sum(1 for job_id in found[0] if states.get(job_id, ("missing", None))[0] != "queued")
            rep.lost = missing[spare:]
            if rep.lost:
                jobdb.mark_enqueued(
                    url, rep.lost, reason="The broker has no message for this job; re-enqueued"
                )
                send(rep.lost, "lost")
    try:
        rep.swept = sweep_unacked(settings)
    except Exception as exc:  # noqa: BLE001
        logger.warning("cannot sweep the broker's unacked entries: %s", exc)
        rep.errors.append(f"sweep: {type(exc).__name__}")
    try:
        rep.expired = expire_jobs(url, get_store(settings), now=now)
    except Exception as exc:  # noqa: BLE001 - the store or the database blinked: next pass
        logger.warning("cannot apply the retention: %s", exc)
        rep.errors.append(f"retention: {type(exc).__name__}")
    for job_id, freed in rep.expired.items():
        logger.info("reconciler: job %s expired (%d bytes freed)", job_id, freed.bytes)
    for what, ids in (("orphaned", rep.orphaned), ("stalled", rep.stalled), ("lost", rep.lost)):
        for job_id in ids:
            logger.warning("reconciler: %s job %s requeued", what, job_id)
    return rep


def run_forever(settings: Settings, stop: threading.Event | None = None) -> None:
    """Reconcile every RECONCILE_INTERVAL seconds until ``stop`` is set; outages only delay a pass."""
    stop = stop or threading.Event()
    jobdb.RETRY_SECONDS = min(settings.DB_RETRY_SECONDS, settings.RECONCILE_INTERVAL)
    logger.info(
        "reconciler: every %.0f s, stall timeout %.0f s, queue grace %.0f s",
        settings.RECONCILE_INTERVAL,
        settings.RECONCILE_STALL_TIMEOUT,
        settings.RECONCILE_QUEUE_GRACE,
    )
    webhooks.start_thread(settings, stop)  # the webhook dispatcher polls on its own, much more often
    while not stop.is_set():
        try:
            rep = reconcile_once(settings)
            if rep.changed():
                logger.info(
                    "reconciler: %d orphaned, %d stalled, %d lost, %d stale broker entries",
                    len(rep.orphaned),
                    len(rep.stalled),
                    len(rep.lost),
                    rep.swept,
                )
        except Exception as exc:  # noqa: BLE001 - the database may be down: try again next interval
            logger.warning("reconcile pass failed: %s: %s", type(exc).__name__, exc)
        stop.wait(settings.RECONCILE_INTERVAL)


def start_thread(settings: Settings) -> threading.Event:
    """Run the reconciler in a daemon thread (the embedded mode); set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(
        target=run_forever, args=(settings, stop), name="mergetune-reconcile", daemon=True
    ).start()
    return stop
