"""Secrets the service keeps for its users (a dataset's own object-store credentials), sealed with
``MERGETUNE_SECRET_KEY``: one Fernet key, or several separated by commas for rotation (MultiFernet:
sealed with the first, opened with any). The API seals, the workers open; both need the same keys.

A new key: ``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SETTING = "MERGETUNE_SECRET_KEY"
#: The credential fields a dataset may carry (secret ones never leave the sealed form).
CREDENTIAL_FIELDS = ("access_key_id", "secret_access_key", "session_token", "endpoint_url", "region")


class SecretKeyError(Exception):
    """No key configured, a malformed key, or sealed data none of the keys opens."""


def parse_keys(value: Any) -> list[bytes]:
    """The Fernet keys of a ``MERGETUNE_SECRET_KEY`` value (comma- or whitespace-separated), checked."""
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    keys = [k for k in (value or "").replace(",", " ").split() if k]
    for i, key in enumerate(keys):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            raise SecretKeyError(
                f"{SETTING}: key {i + 1} is not a Fernet key (32 url-safe base64-encoded bytes)"
            ) from None
    return [k.encode() for k in keys]


def cipher(settings: Any) -> MultiFernet:
    keys = parse_keys(getattr(settings, "SECRET_KEY", None))
    if not keys:
        raise SecretKeyError(f"{SETTING} is not set on this machine")
    return MultiFernet([Fernet(k) for k in keys])


def has_key(settings: Any) -> bool:
    try:
        return bool(parse_keys(getattr(settings, "SECRET_KEY", None)))
    except SecretKeyError:
        return False


def seal(settings: Any, credentials: dict[str, Any]) -> str:
    """The credentials as a Fernet token (text), sealed with the first key."""
    data = {k: credentials[k] for k in CREDENTIAL_FIELDS if credentials.get(k)}
    return cipher(settings).encrypt(json.dumps(data, sort_keys=True).encode()).decode("ascii")


def unseal(settings: Any, token: str | bytes) -> dict[str, str]:
    """The credentials a token holds; SecretKeyError naming the setting when no key opens it."""
    raw = token.encode("ascii") if isinstance(token, str) else bytes(token)
    try:
        data = json.loads(cipher(settings).decrypt(raw))
    except InvalidToken:
        raise SecretKeyError(
            f"the dataset's credentials were sealed with a key that is not in {SETTING} on this machine"
        ) from None
    return {k: str(v) for k, v in data.items() if k in CREDENTIAL_FIELDS and v}


def rotate(settings: Any, token: str) -> str:
    """The token sealed again with the first key (after a key rotation)."""
    try:
        return cipher(settings).rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise SecretKeyError(f"no key in {SETTING} opens these credentials") from None


def mask(access_key_id: str) -> str:
    """``AKIA…XYZ9``: enough of an access key id to tell which one is stored."""
    value = access_key_id.strip()
    if len(value) <= 8:
        return "…" + value[-2:]
    return f"{value[:4]}…{value[-4:]}"


__all__ = ["SETTING", "SecretKeyError", "cipher", "has_key", "mask", "parse_keys", "rotate", "seal", "unseal"]
