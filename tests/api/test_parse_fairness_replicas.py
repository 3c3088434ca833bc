"""The parse pool's project share across API processes: on Postgres a project's admitted parses are
counted over the whole deployment (session advisory locks), so one project spread over several processes
holds at most the places one process gives it, another project still gets in, and a process that dies
lets its places go."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from mergetune.api.errors import ServiceUnavailable
from mergetune.api.parse_pool import ParsePool

A, B, DIES = (f"proj_{uuid.uuid4().hex[:12]}" for _ in range(3))


def _pool() -> ParsePool:
    return ParsePool(workers=2, queue=2, retry_after=3, share=0.5)  # a project: 2 admitted, 1 running


def test_a_project_holds_its_share_over_two_processes_and_another_still_gets_in(settings):
    one, two = _pool(), _pool()  # two API processes: each pool has its own database connections
    with contextlib.ExitStack() as held:
        held.enter_context(one.deployment_slot(settings, A))
        held.enter_context(two.deployment_slot(settings, A))  # the project's 2 places, one in each
        for pool in (one, two):
            with pytest.raises(ServiceUnavailable) as e, pool.deployment_slot(settings, A):
                pass
            assert e.value.code == "parser_busy" and e.value.headers == {"Retry-After": "3"}
            assert "this project already has 2 uploads being validated" in e.value.message
        with two.deployment_slot(settings, B):  # another project is not held up
            pass
    with one.deployment_slot(settings, A), two.deployment_slot(settings, A):
        pass  # both places free again once answered


HOLDER = textwrap.dedent(
    """
    import sys, time
    from mergetune.api.parse_pool import ParsePool
    from mergetune.common.settings import Settings
    settings = Settings(HOME=sys.argv[2], DATABASE_URL=sys.argv[1])
    pool = ParsePool(workers=2, queue=2, retry_after=3, share=0.5)
    with pool.deployment_slot(settings, sys.argv[3]), pool.deployment_slot(settings, sys.argv[3]):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_a_process_that_dies_lets_its_places_go(settings, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, settings.DATABASE_URL, str(tmp_path / "h"), DIES],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(ServiceUnavailable), _pool().deployment_slot(settings, DIES):
            pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 10  # Postgres ends the dead client's session, and its locks with it
    while True:
        try:
            with _pool().deployment_slot(settings, DIES):
                break
        except ServiceUnavailable:
            assert time.monotonic() < deadline, "the dead process's places were not released"
            time.sleep(0.1)
