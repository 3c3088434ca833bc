"""The ``mergetune`` command and an importable HTTP client (:class:`cli.client.Client`)."""

from cli.client import ApiError, Client

__all__ = ["ApiError", "Client"]
