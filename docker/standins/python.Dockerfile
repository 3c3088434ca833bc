# Stand-in for python:3.11-slim-bookworm where no registry is reachable (scripts/compose-test.sh builds it
# from a debootstrap'ed Debian bookworm, whose python3 is 3.11). `python` and `pip` on PATH, and pip
# installs system-wide, as in the official image (a venv at /usr/local/python). It trusts the CA
# certificates found in ca-certificates/ (the building machine's locally added ones) as well, pip included.
ARG BASE_IMAGE=localhost/mergetune-bookworm:minbase
FROM ${BASE_IMAGE}
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/local/share/ca-certificates/README.md \
    && update-ca-certificates \
    && python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
