"""Hostile bytes at the edge: control characters in path parameters, query parameters, headers, JSON and
form fields and multipart names get 400/422 naming the parameter, never a 5xx, and nothing is stored;
the connection stays usable (a real uvicorn). Also: symlink loops under the data root (422), the job
metadata cap (422 ``metadata``), truncated multipart bodies (400, nothing stored)."""

from __future__ import annotations

import http.client
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

from api_support import TINY_DATASET

from mergetune.api.hygiene import _templates

#: Refused everywhere (C0 controls, DEL, C1 controls).
CONTROL = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x85", "\x9f"]
#: Ordinary in body text, refused in paths and query strings.
LINE = ["\t", "\n", "\r"]
PLACEHOLDER = {"job_id": "job_0000", "checkpoint_id": "ckpt_0000", "dataset_id": "ds_0000", "name": "x.json"}


def _stored(settings: Any) -> tuple[list[str], list[str]]:
    """(files under the artifact store's checkpoints/, files in the upload spool)."""
    root = Path(settings.ARTIFACT_URL) / "checkpoints"
    stored = sorted(p.as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []
    spooled = sorted(p.name for p in settings.tmp_dir.iterdir()) if settings.tmp_dir.exists() else []
    return stored, spooled


def _json_strings(value: Any, path: str = "") -> list[str]:
    """Dotted paths of every string value in a JSON document."""
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _json_strings(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _json_strings(v, f"{path}[{i}]")]
    return []


def _inject(value: Any, target: str, char: str, path: str = "") -> Any:
    if isinstance(value, str):
        return f"a{char}b" if path == target else value
    if isinstance(value, dict):
        return {k: _inject(v, target, char, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_inject(v, target, char, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _multipart(parts: list[tuple[bytes, bytes | None, bytes]], boundary: bytes = b"hygieneBOUNDARY") -> bytes:
    """A multipart/form-data body written byte by byte: (name, filename or None, content) per part."""
    out = b""
    for name, filename, content in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


MULTIPART_TYPE = "multipart/form-data; boundary=hygieneBOUNDARY"


def test_control_character_corpus_against_every_operation(
    make_client, settings, auth, checkpoint, dataset, ctx_and_bytes, capsys
):
    """Every operation of the OpenAPI spec (and the dashboard's routes) with each control character in
    each path parameter, each declared query parameter, an undeclared one, each JSON string and key,
    and each multipart name, filename and field: 0 5xx, and each refusal names the parameter."""
    client = make_client()
    client_nostrict = type(client)(client.app, raise_server_exceptions=False)
    client_nostrict.__enter__()
    try:
        spec = client.app.openapi()
        cases: list[tuple[str, str, str, Any, str]] = []  # (label, method, url, kwargs, expected param)
        for template, ops in spec["paths"].items():
            for method, op in ops.items():
                params = op.get("parameters", [])
                path_names = [p["name"] for p in params if p["in"] == "path"]
                base = template.format(**{n: PLACEHOLDER.get(n, "x") for n in path_names})
                for name in path_names:
                    for ch in CONTROL + LINE:
                        url = template.format(
                            **{
                                n: quote(f"a{ch}b" if n == name else PLACEHOLDER.get(n, "x"), safe="")
                                for n in path_names
                            }
                        )
                        cases.append((f"path:{name}", method, url, {}, name))
                query_names = [p["name"] for p in params if p["in"] == "query"] + ["unexpected"]
                for name in query_names:
                    for ch in CONTROL + LINE:
                        url = f"{base}?{quote(name)}={quote(f'1{ch}2', safe='')}"
                        cases.append((f"query:{name}", method, url, {}, name))
        # The dashboard's routes (server-rendered, outside the OpenAPI spec).
        dash = sorted({t for t in _templates(client.app.routes) if not t.startswith("/v1/")})
        assert "/jobs/{job_id}" in dash
        for template in dash:
            names = re.findall(r"{(\w+)(?::\w+)?}", template)
            for name in names:
                for ch in CONTROL:
                    url = re.sub(
                        r"{(\w+)(?::\w+)?}",
                        lambda m, name=name, ch=ch: quote(
                            f"a{ch}b" if m.group(1) == name else PLACEHOLDER.get(m.group(1), "x"), safe=""
                        ),
                        template,
                    )
                    cases.append((f"dashboard-path:{name}", "get", url, {}, name))
        for ch in CONTROL:
            cases.append(("dashboard-query:after", "get", f"/?after={quote(ch, safe='')}", {}, "after"))
            cases.append(("dashboard-query:next", "get", f"/login?next=%2F{quote(ch, safe='')}", {}, "next"))
            cases.append(
                (
                    "dashboard-form:token",
                    "post",
                    "/login",
                    {"data": {"token": f"mt_{ch}", "next": "/"}},
                    "token",
                )
            )

        # JSON bodies: every string value, and a key, of valid bodies.
        other = client.post("/v1/datasets", headers=auth, json={**TINY_DATASET, "name": "other"}).json()
        bodies = {
            "/v1/datasets": {**TINY_DATASET, "path": "sub/dir", "coop_name": "eurosat"},
            "/v1/jobs": {
                "checkpoint_id": checkpoint["id"],
                "dataset_id": dataset["id"],
                "backbone": {"model": "ViT-B-16", "pretrained": "openai"},
                "metadata": {"note": "hello"},
                "eval_dataset_ids": [other["id"]],
            },
        }
        for url, body in bodies.items():
            for target in _json_strings(body):
                for ch in [*CONTROL, "\ud800"]:
                    raw = json.dumps(_inject(body, target, ch)).encode()  # \\u escapes: valid JSON
                    kwargs = {"content": raw, "headers": {"content-type": "application/json"}}
                    cases.append((f"json:{target}", "post", url, kwargs, target))
            for ch in CONTROL:
                keyed = {**body, "options" if url == "/v1/datasets" else "metadata": {f"k{ch}": "v"}}
                raw = json.dumps(keyed).encode()
                field = "options" if url == "/v1/datasets" else "metadata"
                cases.append(
                    (
                        f"json-key:{field}",
                        "post",
                        url,
                        {"content": raw, "headers": {"content-type": "application/json"}},
                        f"{field}.k\\x{ord(ch):02x}",
                    )
                )

        # Multipart: the file's name, a form field's value, a part's name.
        data = ctx_and_bytes[1]
        for ch in CONTROL:
            b = ch.encode("utf-8")
            for label, parts, expected in (
                ("multipart:filename", [(b"file", b"model" + b + b".pth", data)], "filename"),
                (
                    "multipart:name",
                    [(b"name", None, b"ck" + b + b"pt"), (b"file", b"model.pth", data)],
                    "name",
                ),
                (
                    "multipart:method",
                    [(b"method", None, b"coop" + b), (b"file", b"model.pth", data)],
                    "method",
                ),
                (
                    "multipart:part-name",
                    [(b"na" + b + b"me", None, b"x"), (b"file", b"model.pth", data)],
                    "name",
                ),
            ):
                kwargs = {"content": _multipart(parts), "headers": {"content-type": MULTIPART_TYPE}}
                cases.append((label, "post", "/v1/checkpoints", kwargs, expected))

        before = _stored(settings)
        statuses: Counter[int] = Counter()
        by_location: Counter[str] = Counter()
        wrong: list[str] = []
        for label, method, url, kwargs, expected in cases:
            headers = {**auth, **kwargs.pop("headers", {})} if "headers" in kwargs else dict(auth)
            r = client_nostrict.request(method.upper(), url, headers=headers, **kwargs)
            statuses[r.status_code] += 1
            by_location[label.split(":")[0]] += 1
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            param = (body.get("error") or {}).get("param")
            if r.status_code not in (400, 422) or param != expected:
                wrong.append(
                    f"{method.upper()} {url!r} [{label}] -> {r.status_code} param={param!r}: {r.text[:160]}"
                )
        assert not [s for s in statuses if s >= 500], statuses
        assert not wrong, f"{len(wrong)} of {len(cases)} cases:\n" + "\n".join(wrong[:30])
        assert _stored(settings) == before  # no refused upload left a byte behind
        assert len({(t, m) for t, ops in spec["paths"].items() for m in ops}) >= 17
        with capsys.disabled():
            print(
                f"\ncontrol-character corpus: {len(cases)} cases, statuses {dict(statuses)}, by location {dict(by_location)}"
            )
    finally:
        client_nostrict.__exit__(None, None, None)


def test_issue_probes_name_the_parameter(client, auth, settings, ctx_and_bytes):
    """The probes that used to answer 500: each now answers 4xx naming the parameter."""
    probes = {
        "/v1/jobs/%00": "job_id",
        "/v1/jobs?after=%00": "after",
        "/v1/jobs/job_1/artifacts/report.json%00.png": "name",
        "/jobs/%00": "job_id",
        "/v1/checkpoints/%00": "checkpoint_id",
    }
    for url, param in probes.items():
        r = client.get(url, headers=auth)
        assert r.status_code == 400, (url, r.text)
        assert r.json()["error"] == {
            "code": "invalid_characters",
            "message": r.json()["error"]["message"],
            "param": param,
        }
        assert "U+0000" in r.json()["error"]["message"]
    r = client.post("/v1/datasets", headers=auth, json={**TINY_DATASET, "name": "ti\x00ny"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "name"
    r = client.post("/v1/jobs", headers=auth, json={"checkpoint_id": "ck\x00", "dataset_id": "ds_1"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "checkpoint_id"
    r = client.post(
        "/v1/checkpoints",
        headers={**auth, "content-type": MULTIPART_TYPE},
        content=_multipart([(b"file", b"prompts\x00.pth.tar", ctx_and_bytes[1])]),
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "filename"
    assert _stored(settings) == ([], [])
    # Nothing was created by any of them.
    assert client.get("/v1/datasets", headers=auth).json()["data"] == []
    assert client.get("/v1/checkpoints", headers=auth).json()["data"] == []


def test_job_metadata_is_capped_at_32_keys_and_16_kib(client, auth, job_body):
    ok = client.post(
        "/v1/jobs", headers=auth, json={**job_body, "metadata": {f"k{i}": "v" * 400 for i in range(32)}}
    )
    assert ok.status_code == 202, ok.text
    assert len(ok.json()["metadata"]) == 32
    for metadata, what in (
        ({f"k{i}": "v" for i in range(33)}, "33 keys"),
        ({"blob": "x" * (16 * 1024)}, "16 KiB + framing"),
        ({f"k{i}": "é" * 300 for i in range(30)}, "18 KB of UTF-8 in 600-byte values"),
        ({"blob": "x" * (10 * 1024 * 1024)}, "10 MB"),
    ):
        r = client.post("/v1/jobs", headers=auth, json={**job_body, "metadata": metadata})
        assert r.status_code == 422, (what, r.status_code)
        assert r.json()["error"]["param"] == "metadata", what
    listed = client.get("/v1/jobs", headers=auth).json()["data"]
    assert [j["id"] for j in listed] == [ok.json()["id"]]  # nothing else was created


def test_truncated_multipart_gets_400_and_stores_nothing(client, auth, settings, ctx_and_bytes):
    full = _multipart([(b"name", None, b"whole"), (b"file", b"model.pth.tar", ctx_and_bytes[1])])
    cuts = {
        "before the closing boundary": full[: -len(b"--hygieneBOUNDARY--\r\n")],
        "in the middle of the file": full[: len(full) // 2],
        "in the part headers": full[:60],
    }
    for where, body in cuts.items():
        r = client.post("/v1/checkpoints", headers={**auth, "content-type": MULTIPART_TYPE}, content=body)
        assert r.status_code == 400, (where, r.status_code, r.text)
        assert r.json()["error"]["param"] == "file", where
        assert _stored(settings) == ([], []), where
    assert client.get("/v1/checkpoints", headers=auth).json()["data"] == []
    whole = client.post("/v1/checkpoints", headers={**auth, "content-type": MULTIPART_TYPE}, content=full)
    assert whole.status_code == 201 and whole.json()["status"] == "ready", whole.text


def test_symlink_loops_under_the_data_root_get_422(client, auth, settings):
    root = Path(settings.DATA_ROOT)
    (root / "loop_a").symlink_to("loop_b")
    (root / "loop_b").symlink_to("loop_a")
    folder = root / "folder"
    (folder / "train" / "cat").mkdir(parents=True)
    (folder / "train" / "dog").symlink_to("dog")  # a class directory that points at itself
    for path, kind in (("loop_a", "imagefolder"), ("loop_a/train", "imagefolder"), ("folder", "imagefolder")):
        r = client.post("/v1/datasets", headers=auth, json={"name": "loop", "kind": kind, "path": path})
        assert r.status_code == 422, (path, r.status_code, r.text)
        err = r.json()["error"]
        assert err["param"] == "path", (path, err)
        assert str(root) not in err["message"]  # the server's own paths are not echoed
    assert client.get("/v1/datasets", headers=auth).json()["data"] == []


# ------------------------------------------------------------------------- a real server, one socket


def test_connection_survives_hostile_requests_on_a_real_server(live_port, auth, settings, ctx_and_bytes):
    conn = http.client.HTTPConnection("127.0.0.1", live_port, timeout=30)
    headers = {"Authorization": auth["Authorization"]}

    def send(method: str, url: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, Any]:
        h = dict(headers)
        if ctype:
            h["Content-Type"] = ctype
        conn.request(method, url, body=body, headers=h)
        r = conn.getresponse()
        payload = r.read()
        assert r.getheader("connection") != "close", (url, r.status)
        return r.status, json.loads(payload) if payload else None

    hostile = [
        ("GET", "/v1/jobs/%00", None, None, 400),
        ("GET", "/v1/jobs?after=%00", None, None, 400),
        ("GET", "/v1/jobs/job_1/artifacts/report.json%00.png", None, None, 400),
        ("GET", "/jobs/%00", None, None, 400),
        (
            "POST",
            "/v1/datasets",
            json.dumps({**TINY_DATASET, "name": "a\x00"}).encode(),
            "application/json",
            422,
        ),
        (
            "POST",
            "/v1/jobs",
            json.dumps({"checkpoint_id": "\x00", "dataset_id": "d"}).encode(),
            "application/json",
            422,
        ),
        (
            "POST",
            "/v1/checkpoints",
            _multipart([(b"file", b"a\x00.pth", ctx_and_bytes[1])]),
            MULTIPART_TYPE,
            422,
        ),
        (
            "POST",
            "/v1/checkpoints",
            _multipart([(b"file", b"a.pth", ctx_and_bytes[1])])[:-30],
            MULTIPART_TYPE,
            400,
        ),
    ]
    conn.connect()
    local = conn.sock.getsockname()
    for method, url, body, ctype, expected in hostile:
        status, payload = send(method, url, body, ctype)
        assert status == expected, (url, status, payload)
        ok, listing = send("GET", "/v1/checkpoints")
        assert ok == 200 and listing["data"] == [], (url, ok)
        assert conn.sock is not None and conn.sock.getsockname() == local, f"reconnected after {url}"
    conn.close()
    assert _stored(settings) == ([], [])


def test_dashboard_multipart_form_with_nul_gets_422(client, auth):
    """Urlencoded forms are refused at the edge; the dashboard's new-job form also refuses a multipart
    body with a control character in a field, before CSRF or any database lookup."""
    from mergetune.api.dashboard.auth import csrf_token

    secret = auth["Authorization"].split(" ", 1)[1]
    assert (
        client.post("/login", data={"token": secret, "next": "/"}, follow_redirects=False).status_code == 303
    )
    fields = {
        "checkpoint_id": (None, "ck\x00"),
        "dataset_id": (None, "ds_1"),
        "csrf": (None, csrf_token(secret)),
    }
    r = client.post("/jobs", files=fields, follow_redirects=False)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "checkpoint_id"
    fields = {"idempotency_key": (None, "k\x01"), "csrf": (None, csrf_token(secret))}
    r = client.post("/jobs", files=fields, follow_redirects=False)
    assert r.status_code == 422 and r.json()["error"]["param"] == "idempotency_key"


def test_a_nul_that_reaches_postgres_is_422_not_500(make_client, auth):
    """Defence in depth: should a NUL byte reach Postgres by a path the edge does not check, the answer
    is 422 invalid_characters (and the request after it is served normally)."""
    from sqlalchemy import select

    from mergetune.api.deps import SessionDep
    from mergetune.common.models import Project

    client = make_client()

    def probe(session: SessionDep) -> dict[str, int]:
        return {"n": len(list(session.scalars(select(Project).where(Project.name == "a\x00b"))))}

    probe.__annotations__ = {"session": SessionDep, "return": dict[str, int]}  # this module's are strings
    client.app.add_api_route("/probe-nul", probe, methods=["GET"])
    r = client.get("/probe-nul")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_characters"
    assert client.get("/v1/jobs", headers=auth).status_code == 200
