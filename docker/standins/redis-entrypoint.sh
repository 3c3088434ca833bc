#!/bin/sh
# redis-server without a config file refuses clients from other hosts (protected mode): turn it off and
# listen on all addresses, as the official image does.
set -eu
if [ "${1:-}" = "redis-server" ]; then
    shift
    exec redis-server --protected-mode no --bind '* -::*' "$@"
fi
exec "$@"
