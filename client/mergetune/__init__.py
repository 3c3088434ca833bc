"""MergeTune: the Python client of the MergeTune recovery service.

    import mergetune
    with mergetune.Client("http://127.0.0.1:8000", token) as c:
        job = c.wait_job(c.create_job(ckpt_id, ds_id)["id"])

    async with mergetune.AsyncClient("http://127.0.0.1:8000", token) as c:
        job = await c.wait_job((await c.create_job(ckpt_id, ds_id))["id"])

Both clients have a method for every client command of the ``mergetune`` CLI. Installed alone
(``pip install ./client``: httpx, typer and rich, no torch) this package is the client and the CLI; the
server's packages (``mergetune.api``, ``mergetune.worker``, ``mergetune.core``, ``mergetune.common``,
``mergetune.ops``) come with the server.
"""

from mergetune.client import ApiError, AsyncClient, Client

__all__ = ["ApiError", "AsyncClient", "Client"]
