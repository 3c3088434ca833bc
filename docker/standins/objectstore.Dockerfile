# Stand-in S3 object store for the optional `s3` profile (docker-compose.yml, docker/compose.s3.yml):
# moto's server mode, which speaks the S3 protocol, on port 9000, with the buckets named in
# OBJECTSTORE_BUCKETS created at start. Built from the Python image (the python stand-in where no
# registry is reachable: PYTHON_IMAGE=localhost/mergetune-python:3.11-bookworm). It keeps objects in
# memory: a restart empties it. For data that must last, point the service at a real bucket instead.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
RUN python -m pip install --no-cache-dir "moto[server]>=5.0,<6"
COPY --chmod=0755 objectstore-entrypoint.sh /usr/local/bin/objectstore-entrypoint.sh
ENV OBJECTSTORE_PORT=9000 OBJECTSTORE_BUCKETS=mergetune
EXPOSE 9000
ENTRYPOINT ["objectstore-entrypoint.sh"]
