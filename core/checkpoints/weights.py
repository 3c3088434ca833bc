"""Where a backbone's pretrained weights may come from, checked without torch (the API uses it on job bodies).

``backbone.pretrained`` is one of

- ``random`` / ``random:<seed>`` (random init) or ``builtin`` (the bundled tiny CLIP);
- an open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k``, ...), looked up in the local cache only;
- a weights file, named relative to the model root (``MERGETUNE_MODEL_ROOT``, default ``MODEL_CACHE_DIR``)
  or by an absolute path inside it. The path is confined exactly like dataset paths: no ``..``, no symlink
  that leads out, never inside a forbidden tree (the artifact store). Whatever fails the confinement gets
  the same ``path_outside_root`` error whether or not the file exists, so the error reveals nothing about
  files outside the root.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mergetune.core.errors import BackboneError

PARAM = "backbone.pretrained"
#: Suffixes that make a ``pretrained`` value a file name rather than an open_clip tag.
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar", ".ckpt")
#: Bounds of a worker's inventory scan of the model root (reported with its heartbeat).
MAX_INVENTORY_FILES = 2000
MAX_INVENTORY_DEPTH = 6


def parse_random(pretrained: str) -> int | None:
    """The seed of ``random`` / ``random:<seed>`` (``random`` is seed 0), else None."""
    if pretrained == "random":
        return 0
    if pretrained.startswith("random:"):
        try:
            return int(pretrained.split(":", 1)[1])
        except ValueError:
            raise BackboneError(
                f"bad random seed in pretrained {pretrained!r}", code="weights_invalid", param=PARAM
            ) from None
    return None


def is_file_reference(pretrained: str) -> bool:
    """True when ``pretrained`` names a file (a path separator, a leading dot or a weights suffix)."""
    p = pretrained.strip()
    if p == "builtin" or parse_random(p) is not None:
        return False
    return "/" in p or "\\" in p or p.startswith(".") or p.lower().endswith(WEIGHTS_SUFFIXES)


def outside_root(shown: str) -> BackboneError:
    return BackboneError(
        f"backbone.pretrained {shown!r} is not a file under the model root; name weights files relative to "
        "MERGETUNE_MODEL_ROOT (or by an absolute path inside it)",
        code="path_outside_root",
        param=PARAM,
    )


def _is_under(base: str, target: str) -> bool:
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)


def weights_relpath(model_root: str | os.PathLike[str], pretrained: str) -> str:
    """The lexically checked path of ``pretrained`` relative to ``model_root`` (posix), else
    ``path_outside_root``. Absolute paths are accepted when they lie inside the root as written or as
    resolved. Symlinks are judged later by :func:`resolve_weights` on the machine that reads the file."""
    shown = pretrained[:200]
    p = pretrained.strip().replace("\\", "/")
    if not p or "\x00" in p or ".." in p.split("/"):
        raise outside_root(shown)
    if p.startswith("/") or (len(p) > 1 and p[1] == ":"):
        root_as_given = os.path.normpath(os.fspath(model_root))
        root_real = os.path.realpath(os.fspath(model_root))
        target = os.path.normpath(p)
        for root in (root_as_given, root_real):
            if _is_under(root, target) and target != root:
                return Path(os.path.relpath(target, root)).as_posix()
        raise outside_root(shown)
    norm = os.path.normpath(p)
    if norm in (".", "") or norm.startswith(".."):
        raise outside_root(shown)
    return Path(norm).as_posix()


def resolve_weights(
    model_root: str | os.PathLike[str], pretrained: str, *, forbidden: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """``model_root / relpath`` with symlinks resolved, confined to the root and outside every ``forbidden``
    tree. Raises ``path_outside_root`` (never revealing whether the file exists), or ``weights_missing``
    when the confined path is not a file (the root is the service's own: saying so leaks nothing)."""
    rel = weights_relpath(model_root, pretrained)
    root = os.path.realpath(os.fspath(model_root))
    real = os.path.realpath(os.path.join(root, rel))
    if not _is_under(root, real) or real == root:
        raise outside_root(pretrained[:200])
    for tree in forbidden:
        if _is_under(os.path.realpath(os.fspath(tree)), real):
            raise outside_root(pretrained[:200])
    if not os.path.isfile(real):
        raise BackboneError(
            f"no weights file {rel!r} under the model root", code="weights_missing", param=PARAM
        )
    return Path(real)


def inventory(
    model_root: str | os.PathLike[str], *, forbidden: Iterable[str | os.PathLike[str]] = ()
) -> list[str]:
    """Weights files under the model root (relative posix paths, sorted; bounded scan, symlinks that leave
    the root skipped): what a worker reports it can load."""
    root = os.path.realpath(os.fspath(model_root))
    if not os.path.isdir(root):
        return []
    banned = [os.path.realpath(os.fspath(t)) for t in forbidden]
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = (
            [] if depth >= MAX_INVENTORY_DEPTH else sorted(d for d in dirnames if not d.startswith("."))
        )
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(WEIGHTS_SUFFIXES):
                continue
            real = os.path.realpath(os.path.join(dirpath, name))
            if not _is_under(root, real) or any(_is_under(b, real) for b in banned):
                continue
            out.append(Path(os.path.relpath(os.path.join(dirpath, name), root)).as_posix())
            if len(out) >= MAX_INVENTORY_FILES:
                return sorted(out)
    return sorted(out)
