"""The ``mergetune`` command and an importable HTTP client (:class:`mergetune.client.Client`)."""

from mergetune.client import ApiError, Client

__all__ = ["ApiError", "Client"]
