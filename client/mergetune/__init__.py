"""MergeTune: the Python client of the MergeTune recovery service (``mergetune.Client``).

    import mergetune
    with mergetune.Client("http://127.0.0.1:8000", token) as c:
        job = c.wait_job(c.create_job(ckpt_id, ds_id)["id"])

Installed alone (``pip install ./client``) this package needs only httpx; the server's packages
(``mergetune.api``, ``mergetune.worker``, ``mergetune.core``, ``mergetune.common``) come with the server.
"""

from mergetune.client import ApiError, Client

__all__ = ["ApiError", "Client"]
