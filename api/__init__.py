"""The FastAPI process: routes, schemas, services, dependencies, errors (no torch here)."""
