"""The API app the browser tests serve: ``api.main.create_app()`` with the dashboard router.

Until the lead wires ``app.include_router(dashboard.router)`` into api/main.py, this adds it; once it is
wired, the app is used as is (no duplicate routes).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI


def create_app(settings: Any = None) -> FastAPI:
    from api import dashboard
    from api.main import create_app as base_create_app

    app = base_create_app(settings)
    if not any(getattr(route, "path", None) == "/login" for route in app.routes):
        app.include_router(dashboard.router)
    return app
