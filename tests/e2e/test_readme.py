"""The README's example and the walk-through of docs/USAGE.md, executed as written: every ```bash block
whose first line is a ``# readme-test`` comment runs, README.md's first, then docs/USAGE.md's, each file's
in order, in one bash (``set -eo pipefail``) from a folder that looks like the repository root (``.venv``
and ``scripts`` linked), with a HOME and a TMPDIR of its own and only the port changed from 8000 to a free
one. A command that fails, a job that does not succeed or an artifact that is not downloaded fails the
test, and so does a file left in that folder: the blocks write under ``$WORK`` (``mktemp -d``) only.

Every other ```bash block of README.md and docs/*.md (but the reference pages ALGORITHM.md and API.md)
says in the paragraph just above it what it needs (``_Needs ..._``), and no shell block holds a usage synopsis
(``[--option]``, ``<placeholder>``, ``job_...``): those go in plain blocks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import worker_support as ws

pytestmark = pytest.mark.slow

README = ws.REPO / "README.md"
USAGE = ws.REPO / "docs" / "USAGE.md"
#: The files whose marked blocks run, in this order (the README's short example, then the walk-through).
SOURCES = (README, USAGE)
#: Reference pages whose snippets are not commands to run as they stand.
REFERENCE = {"ALGORITHM.md", "API.md"}
BLOCK = re.compile(r"^```bash\n(# readme-test[^\n]*\n.*?)^```$", re.S | re.M)
ANY_BASH = re.compile(r"^```bash\n(.*?)^```$", re.S | re.M)
NOTE = re.compile(r"_Needs .+\._", re.S)
#: Usage-synopsis marks that a shell cannot run: [--opt], [OPTIONS], <name>, a made-up id like job_...
SYNOPSIS = re.compile(r"\[--?[A-Za-z]|\[[A-Z_]+\]|<[A-Za-z_][\w -]*>|\b(?:job|ckpt|ds|swp|tok|wgt)_\.\.\.")
COMMENT = re.compile(r"(?:^|\s)#.*$", re.M)  # what a shell ignores: example output may show ids as job_...


def blocks_of(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def readme_blocks() -> list[str]:
    return [block for path in SOURCES for block in blocks_of(path)]


def doc_files() -> list[Path]:
    return [README, *(p for p in sorted((ws.REPO / "docs").glob("*.md")) if p.name not in REFERENCE)]


def test_the_readme_marks_its_walk_through():
    # The README's own example: a server, an upload, a job and a download through REST, stopped after.
    short = "\n".join(blocks_of(README))
    for must in ("mergetune serve --embedded", "token create", "/v1/checkpoints", "/v1/datasets", "/v1/jobs",
                 "artifacts/prompts.safetensors", "kill $SERVER", "mktemp -d"):  # fmt: skip
        assert must in short, must
    # The walk-through: REST (with every page of events), the CLI, the CoOp archive, a sweep, tokens.
    walk = blocks_of(USAGE)
    assert walk[0].splitlines()[2].startswith("export WORK=$(mktemp -d)"), walk[0][:300]
    joined = "\n".join(walk)
    for must in ("mergetune serve --embedded", "token create", "/v1/checkpoints", "/v1/jobs", "events",
                 "next_cursor", "mergetune upload", "mergetune job wait", "mergetune download",
                 "prompts-coop.tar", "mergetune sweep create --tree", "mergetune sweep download",
                 "mergetune token revoke"):  # fmt: skip
        assert must in joined, must


def test_every_shell_block_runs_or_says_what_it_needs():
    unlabelled, synopses = [], []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for m in ANY_BASH.finditer(text):
            body, line = m.group(1), text[: m.start()].count("\n") + 1
            where = f"{path.relative_to(ws.REPO)}:{line}"
            found = SYNOPSIS.search(COMMENT.sub("", body))
            if found:
                synopses.append(f"{where}: {found.group(0)!r}")
            if body.startswith("# readme-test"):
                continue
            above = text[: m.start()].rstrip().rsplit("\n\n", 1)[-1]  # the paragraph just above
            if not NOTE.fullmatch(above):
                unlabelled.append(where)
    assert not unlabelled, f"shell blocks neither run by this test nor labelled '_Needs ..._': {unlabelled}"
    assert not synopses, f"usage synopses inside shell blocks: {synopses}"


def test_the_synopsis_check_can_fail():
    for bad in ("mergetune token list [--project vision]", "mergetune sweep wait swp_...",
                "cmd [OPTIONS]", "cp <file> out/"):  # fmt: skip
        assert SYNOPSIS.search(bad), bad
    for good in ('jq -r ".data[-1].message"', "[ -n \"$AFTER\" ] || break", "echo ${SECRET:0:10}",
                 'curl -F file=@x  # -> {"id": "ckpt_..."}'):  # fmt: skip
        assert not SYNOPSIS.search(COMMENT.sub("", good)), good


def _files_under(root: Path) -> set[str]:
    """Every path under ``root``, links not followed (``.venv`` and ``scripts`` are links)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_the_readme_walk_through_runs_as_written(tmp_path):
    port = ws.free_port()
    script = "set -eo pipefail\n" + "\n".join(readme_blocks())
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("--port 8000", f"--port {port}")
    root, home, tmp = tmp_path / "repo", tmp_path / "home", tmp_path / "tmp"
    for d in (root, home, tmp):
        d.mkdir()
    for name in (".venv", "scripts"):
        (root / name).symlink_to(ws.REPO / name)
    before = _files_under(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGETUNE_")}
    env.update(HOME=str(home), TMPDIR=str(tmp), XDG_STATE_HOME=str(tmp_path / "state"), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", MERGETUNE_LOG_LEVEL="WARNING")  # fmt: skip
    log = tmp_path / "readme.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=540)
        except subprocess.TimeoutExpired:
            rc = None  # reported below with the log's tail
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the server, if the script stopped before `kill $SERVER`
            except ProcessLookupError:
                pass
    text = log.read_text(errors="replace")
    assert rc == 0, f"exit status {rc} (None: still running after 540 s)\n{text[-6000:]}"
    assert "true" in text  # jq -e '.status == "succeeded"'
    assert text.count("Recovered HM") >= 2, text[-3000:]  # the README's verdict and the walk-through's

    # Nothing written next to the checkout: every output is under the two WORK folders in TMPDIR.
    assert _files_under(root) == before, sorted(_files_under(root) - before)
    check_outputs(tmp, text)


def check_outputs(tmp: Path, text: str) -> None:
    """What the README's example and the walk-through leave under their ``$WORK`` folders in ``tmp``."""
    works = [p.parent for p in tmp.glob("*/home")]
    assert len(works) == 2, works  # one mktemp -d each
    walk_work, readme_work = sorted(works, key=lambda p: not (p / "recovered").exists())
    assert (readme_work / "prompts.safetensors").stat().st_size > 0
    assert (walk_work / "prompts.safetensors").stat().st_size > 0
    got = {p.name for p in (walk_work / "recovered").iterdir()}
    assert {"prompts.safetensors", "prompts.pth.tar", "report.json", "report.html", "curves.png"} <= got, got
    # The CoOp archive unpacked where CoOp's --model-dir looks, with the job's epoch count.
    assert (walk_work / "coop-model" / "prompt_learner" / "model.pth.tar-2").stat().st_size > 0
    # The sweep: 2 seeds x 2 grid points on the builtin dataset, every report format downloaded.
    reports = sorted(p.suffix for p in (walk_work / "sweep").iterdir())
    assert reports == [".csv", ".html", ".json", ".tex", ".txt"], reports
    (report,) = (walk_work / "sweep").glob("*.json")
    sweep = json.loads(report.read_text())["sweep"]
    assert sweep["status"] == "succeeded" and sweep["progress"]["succeeded"] == 4, sweep["progress"]
    assert [c["seed"] for c in sweep["cells"]] == [1, 2] and sweep["points"] == [{"w_zs": 1}, {"w_zs": 10}]
    table = report.with_suffix(".txt").read_text()
    assert "builtin" in table and "MergeTune (recovered)" in table, table
    # Tokens: the walk-through's second token is created with an expiry, listed, then revoked by prefix.
    made = re.search(r"created token (tok_\w+) for project vision .*, expires ", text)
    assert made, text[-2000:]
    assert re.search(rf"token {made.group(1)} \(mt_\w+\.\.\.\) revoked at ", text), text[-2000:]
