"""The finish estimate (mergetune.common.eta) on hand-made histories: no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mergetune.common import eta

NOW = datetime(2026, 12, 7, 14, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def running(epochs: int, seconds: list[float], *, started: datetime | None = None, **kw) -> eta.JobState:
    """A running job whose measured epochs ran back to back, the last ending now."""
    total = sum(seconds)
    return eta.JobState(
        status="running",
        model="ViT-B-16",
        mode="prompt/exact",
        images=800,
        epochs=epochs,
        started_at=started or NOW - total * S,
        epoch_seconds=seconds,
        epochs_done=len(seconds),
        epoch_done_at=NOW,
        **kw,
    )


def done(model="ViT-B-16", mode="prompt/exact", images=800, epochs=10, per_epoch=10.0, other=20.0, ev=15.0):
    return eta.Finished(model, mode, images, epochs, per_epoch, other, ev)


def test_a_300_epoch_job_at_epoch_5_is_paced_by_its_steady_epochs_not_its_warm_up():
    # the first epoch carries 50 s of warm-up; then 10 s per epoch: 295 x 10 s of training remain
    job = running(300, [60.0, 10.0, 10.2, 9.8, 10.0])
    e = eta.estimate(job, [], NOW, default_epoch_seconds=5.0)
    truth = NOW + 2950 * S
    assert abs((e.likely - truth).total_seconds()) <= 0.2 * 2950
    assert abs((e.likely - truth).total_seconds()) <= 30  # the median of the 4 steady epochs: 10.0 s
    assert e.earliest <= truth <= e.latest
    assert e.basis == "this job's 5 measured epochs; evaluation counted as 3 epochs at the configured default"
    # the mean of the epochs so far (what a pace over the whole run gives) would be 1.9x too late
    mean_pace = NOW + 295 * (sum([60.0, 10.0, 10.2, 9.8, 10.0]) / 5) * S
    assert (mean_pace - truth).total_seconds() > 0.8 * 2950


def test_the_range_narrows_as_epochs_accumulate():
    # (no evaluation to speak of: the default pace is 1 ms)
    few = eta.estimate(running(100, [10.0] * 4), [], NOW, default_epoch_seconds=0.001)
    many = eta.estimate(running(100, [10.0] * 64), [], NOW, default_epoch_seconds=0.001)
    width_few = (few.latest - few.earliest).total_seconds() / (few.likely - NOW).total_seconds()
    width_many = (many.latest - many.earliest).total_seconds() / (many.likely - NOW).total_seconds()
    assert width_many < width_few / 3
    # noisy epochs give a wider range than steady ones
    noisy = eta.estimate(running(100, [6.0, 14.0] * 32), [], NOW, default_epoch_seconds=0.001)
    width_noisy = (noisy.latest - noisy.earliest).total_seconds() / (noisy.likely - NOW).total_seconds()
    assert width_noisy > 2 * width_many


def test_running_adds_the_evaluation_time_of_similar_jobs():
    history = [done(ev=30.0), done(ev=40.0), done(ev=50.0)]
    e = eta.estimate(running(10, [10.0] * 5), history, NOW, default_epoch_seconds=5.0)
    assert e.likely == NOW + (5 * 10 + 40) * S
    assert e.basis == "this job's 5 measured epochs; evaluation time from similar jobs"


def test_an_overrunning_epoch_pushes_the_finish_but_never_before_now():
    job = running(10, [10.0] * 5)
    later = NOW + 60 * S  # the 6th epoch has run 60 s instead of 10
    e = eta.estimate(job, [], later, default_epoch_seconds=5.0)
    assert e.earliest >= later
    assert e.likely >= later + 4 * 10 * S


def test_a_queued_job_takes_similar_jobs_as_a_range_and_waits_for_the_queue():
    history = [done(per_epoch=p, other=20.0) for p in (8.0, 9.0, 10.0, 11.0, 12.0)]
    job = eta.JobState(status="queued", model="ViT-B-16", mode="prompt/exact", images=1000, epochs=20)
    alone = eta.estimate(job, history, NOW, default_epoch_seconds=5.0)
    # seconds per epoch scaled by the training images (1000 vs 800), times 20 epochs, plus the rest
    assert alone.likely == NOW + (20 * 10.0 * 1000 / 800 + 20) * S
    assert alone.earliest < alone.likely < alone.latest
    assert alone.basis == "5 similar finished jobs (ViT-B-16, prompt, exact features, ~1.0k images)"
    # one running job with 3 of its 10 epochs left (10 s each) and one queued job ahead, one worker
    ahead = running(10, [10.0] * 7)
    queued = eta.estimate(
        job,
        history,
        NOW,
        default_epoch_seconds=5.0,
        queue=eta.Queue(queued_ahead=1, running=[ahead], workers=1),
    )
    wait = (3 * 10 + 15) + (20 * 12.5 + 20)  # its remaining training + evaluation, then a job like this
    assert queued.start == NOW + wait * S
    assert queued.likely == alone.likely + wait * S
    assert queued.earliest >= NOW and queued.earliest > queued.start
    assert queued.basis.endswith("; starts in about 5 min (2 jobs ahead, 1 worker)")
    two_workers = eta.estimate(
        job,
        history,
        NOW,
        default_epoch_seconds=5.0,
        queue=eta.Queue(queued_ahead=1, running=[ahead], workers=2),
    )
    assert two_workers.start == NOW + wait / 2 * S


def test_never_a_finish_before_the_estimated_start_even_for_a_tiny_job():
    history = [done(per_epoch=0.001, other=0.0, ev=0.0)]
    job = eta.JobState(status="queued", model="ViT-B-16", mode="prompt/exact", images=800, epochs=1)
    e = eta.estimate(job, history, NOW, default_epoch_seconds=5.0, queue=eta.Queue(queued_ahead=3, workers=1))
    assert e.earliest > e.start >= NOW
    assert e.earliest <= e.likely <= e.latest


def test_similarity_falls_back_step_by_step_and_says_so():
    job = eta.JobState(status="queued", model="ViT-B-16", mode="prompt/bank", images=10_000, epochs=10)
    same = done(mode="prompt/bank", images=12_000)
    other_size = done(mode="prompt/bank", images=100)
    other_mode = done(mode="head/exact", images=10_000)
    other_model = done(model="ViT-L-14", mode="prompt/bank", images=10_000, per_epoch=40.0, other=80.0)

    e = eta.estimate(job, [same, other_size, other_mode], NOW, default_epoch_seconds=5.0)
    assert e.basis == "1 similar finished job (ViT-B-16, prompt, feature bank, ~10k images)"
    e = eta.estimate(job, [other_size, other_mode], NOW, default_epoch_seconds=5.0)
    assert e.basis == (
        "1 finished job of the same model and mode at other sizes, scaled to ~10k images "
        "(ViT-B-16, prompt, feature bank)"
    )
    assert e.likely == NOW + (10 * 10.0 * 100 + 20) * S  # 100 times the images: 100 times the epoch
    e = eta.estimate(job, [other_model], NOW, default_epoch_seconds=5.0)
    assert e.basis == (
        "1 finished job of other models or modes, scaled by model size and image count "
        "(no finished ViT-B-16 prompt, feature bank job)"
    )
    factor = eta.model_cost("ViT-B-16") / eta.model_cost("ViT-L-14")
    assert abs((e.likely - NOW).total_seconds() - (10 * 40.0 + 80.0) * factor) < 1e-3
    e = eta.estimate(job, [], NOW, default_epoch_seconds=5.0)
    assert e.basis == (
        "the configured default of 5 s per epoch (evaluation counted as 3 epochs): no similar job has finished"
    )
    # 10 epochs and 3 more for the evaluation, 5 s each; half to twice that
    assert e.likely == NOW + 65 * S and e.earliest == NOW + 32.5 * S and e.latest == NOW + 130 * S


def test_before_its_first_epoch_a_started_job_counts_from_its_start():
    history = [done()]
    job = eta.JobState(
        status="running",
        model="ViT-B-16",
        mode="prompt/exact",
        images=800,
        epochs=10,
        started_at=NOW - 30 * S,
    )
    e = eta.estimate(job, history, NOW, default_epoch_seconds=5.0)
    assert e.likely == NOW - 30 * S + (10 * 10 + 20) * S
    assert e.basis.endswith("; no epoch of this job finished yet")
    late = eta.estimate(job, history, NOW + 500 * S, default_epoch_seconds=5.0)
    assert late.earliest >= NOW + 500 * S


def test_evaluating_finishes_after_the_similar_jobs_evaluation():
    history = [done(ev=20.0), done(ev=30.0), done(ev=40.0)]
    job = running(4, [10.0] * 4, evaluating_since=NOW - 10 * S)
    job = eta.JobState(**{**job.__dict__, "status": "evaluating"})
    e = eta.estimate(job, history, NOW, default_epoch_seconds=5.0)
    assert e.likely == NOW + 20 * S  # 30 s of evaluation, 10 s of it done
    assert e.basis.startswith("evaluation time of 3 similar finished jobs")
    assert (
        eta.estimate(
            eta.JobState(**{**job.__dict__, "status": "succeeded"}), history, NOW, default_epoch_seconds=5.0
        )
        is None
    )


def test_successive_estimates_do_not_swing_beyond_their_spread():
    # a steady job whose 11th epoch took 3x as long: the raw estimate jumps, the shown one moves by at
    # most half the range per poll and the range holds both
    steady = eta.estimate(running(100, [10.0] * 10), [], NOW, default_epoch_seconds=5.0)
    jumpy = eta.JobState(**{**running(100, [10.0] * 10).__dict__})
    t = NOW + 30 * S
    raw = eta.estimate(
        eta.JobState(**{**jumpy.__dict__, "epoch_seconds": [10.0] * 10 + [30.0] * 6, "epochs_done": 16,
                         "epoch_done_at": t}),
        [], t, default_epoch_seconds=5.0,
    )  # fmt: skip
    shown = eta.stabilize(steady, raw, t)
    half = max(raw.latest - raw.earliest, steady.latest - steady.earliest) / 2
    assert abs(shown.likely - steady.likely) <= half + S
    assert shown.earliest <= shown.likely <= shown.latest and shown.earliest >= t
    # polls of a steady job give the same finish
    again = eta.stabilize(
        steady, eta.estimate(running(100, [10.0] * 10), [], NOW, default_epoch_seconds=5.0), NOW
    )
    assert again.likely == steady.likely
    # a series of polls converges on the new pace without a jump larger than the spread
    prev = steady
    for i in range(40):
        now = t + i * S
        nxt = eta.stabilize(prev, raw, now)
        assert abs((nxt.likely - prev.likely).total_seconds()) <= max(
            1.0,
            max((raw.latest - raw.earliest).total_seconds(), (prev.latest - prev.earliest).total_seconds())
            / 2,
        )
        prev = nxt
    assert prev.likely == raw.likely


def test_train_images_and_model_costs():
    from mergetune.api.services.estimates import train_images

    assert train_images({"shots": 16}, "base2novel", 100, {"train": 5000}) == 800
    assert train_images({"shots": 16}, "all", 100, {"train": 5000}) == 1600
    assert train_images({"shots": 100}, "all", 100, {"train": 5000}) == 5000
    assert train_images({}, "all", 10, {"train": 300}) == 300
    assert eta.model_cost("ViT-L-14") > eta.model_cost("ViT-B-16") > eta.model_cost("ViT-B-32")
    assert eta.model_cost("tiny-test") < eta.model_cost("RN50")


def test_few_measured_epochs_lean_on_similar_jobs_pace_many_do_not():
    history = [done(per_epoch=10.0, ev=0.0)] * 3
    # one slow first epoch (30 s): alone it would say 99 x 30 s; similar jobs' 10 s counts as 2 epochs
    one = eta.estimate(running(100, [30.0]), history, NOW, default_epoch_seconds=5.0)
    pace = (30.0 + 2 * 10.0) / 3
    assert abs((one.likely - NOW).total_seconds() - 99 * pace) < 1
    assert one.basis == "this job's 1 measured epoch and similar jobs' pace"
    assert one.earliest <= NOW + 99 * 10.0 * S and one.latest >= NOW + 99 * 23 * S
    # 20 epochs of 20 s: the job's own pace, 20 s, within 10 %
    many = eta.estimate(running(100, [20.0] * 20), history, NOW, default_epoch_seconds=5.0)
    assert abs((many.likely - NOW).total_seconds() - 80 * 20.0) < 0.1 * 80 * 20.0
