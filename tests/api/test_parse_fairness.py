"""mergetune.api.parse_pool: one project cannot hold more than its share of the parse slots; another
project's request runs at once, and a freed slot goes to the project with the fewest running parses."""

from __future__ import annotations

import threading
import time

import pytest

from mergetune.api.errors import ServiceUnavailable
from mergetune.api.parse_pool import ParsePool


class Holder:
    """A thread holding one slot of ``pool`` for ``project`` until released."""

    def __init__(self, pool: ParsePool, project: str) -> None:
        self.running = threading.Event()
        self.release = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(pool, project), daemon=True)
        self.thread.start()

    def _run(self, pool: ParsePool, project: str) -> None:
        try:
            with pool.slot(project):
                self.running.set()
                self.release.wait(10)
        except ServiceUnavailable as exc:
            self.error = exc

    def done(self) -> None:
        self.release.set()
        self.thread.join(10)


def _settle() -> None:
    time.sleep(0.1)


def test_a_project_runs_at_most_its_share_and_the_other_gets_the_free_slot() -> None:
    pool = ParsePool(workers=2, queue=4, retry_after=5, share=0.5)  # per project: 1 running, 3 admitted
    a = [Holder(pool, "A") for _ in range(3)]
    _settle()
    assert sum(h.running.is_set() for h in a) == 1  # the second slot stays free for others
    with pytest.raises(ServiceUnavailable) as ei:  # A's fourth: over its share of the admitted
        with pool.slot("A"):
            pass
    assert ei.value.code == "parser_busy" and ei.value.headers == {"Retry-After": "5"}
    b = Holder(pool, "B")
    assert b.running.wait(2)  # B runs at once although A has two waiting
    first = next(h for h in a if h.running.is_set())
    first.done()
    _settle()
    assert sum(h.running.is_set() for h in a) == 2  # A's next one takes A's slot back
    for h in [*a, b]:
        h.done()
    assert all(h.error is None for h in [*a, b])


def test_a_freed_slot_goes_to_the_project_with_the_fewest_running() -> None:
    pool = ParsePool(workers=2, queue=6, retry_after=5, share=1.0)  # no cap: only the order is fair
    a1, a2 = Holder(pool, "A"), Holder(pool, "A")
    assert a1.running.wait(2) and a2.running.wait(2)
    a3 = Holder(pool, "A")  # waits first
    _settle()
    b = Holder(pool, "B")  # waits second, but its project runs nothing
    _settle()
    a1.done()
    assert b.running.wait(2)
    _settle()
    assert not a3.running.is_set()
    for h in (a2, a3, b):
        h.done()


def test_a_full_pool_still_answers_503_and_frees_up() -> None:
    pool = ParsePool(workers=1, queue=0, retry_after=7, share=0.5)
    h = Holder(pool, "A")
    assert h.running.wait(2)
    for project in ("A", "B"):
        with pytest.raises(ServiceUnavailable):
            with pool.slot(project):
                pass
    h.done()
    with pool.slot("B"):
        pass
