#!/usr/bin/env bash
# The browser tests drive Debian's Chromium (never a downloaded browser). Install it when missing and
# we are allowed to; the browser tests skip with a clear reason when it cannot be installed.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium and chromium-driver for the browser tests"
  (apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 ||
    (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1)) ||
    echo "could not install chromium; browser tests will be skipped" >&2
fi
exit 0
