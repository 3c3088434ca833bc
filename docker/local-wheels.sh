#!/usr/bin/env bash
# Fills docker/wheels/ with the pinned torch/torchvision wheels of requirements/ml.txt and all their
# dependencies, resolved by this machine's pip configuration (a local wheel cache or index, PyPI, ...), for
# `--build-arg TORCH_WHEELS=1`. Files already on local disk are hard-linked (copied across filesystems);
# the rest are downloaded. A rerun with an unchanged requirements/ml.txt does nothing.
#   usage: docker/local-wheels.sh [PIP]      (PIP defaults to `python3 -m pip`)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=docker/wheels
req=requirements/ml.txt
pip_cmd=(${1:-python3 -m pip})
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -f $dest/.stamp && "$(cat "$dest/.stamp")" == "$want" ]]; then
    echo "local-wheels: $dest is up to date for $req"
    exit 0
fi
rm -f "$dest"/*.whl "$dest/.stamp"
"${pip_cmd[@]}" install --quiet --dry-run --ignore-installed --report "$dest/.report.json" -r "$req"
python3 - "$dest" <<'PY'
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request

dest = sys.argv[1]
report = json.load(open(os.path.join(dest, ".report.json")))
remote = []
for item in report["install"]:
    url = item["download_info"]["url"]
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name.endswith(".whl"):
        sys.exit(f"local-wheels: {item['metadata']['name']} resolves to {name}, not a wheel")
    target = os.path.join(dest, name)
    if url.startswith("file://"):
        src = urllib.parse.unquote(urllib.parse.urlparse(url).path)
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
    else:
        remote.append((url, target))
for url, target in remote:
    with urllib.request.urlopen(url, timeout=300) as r, open(target + ".part", "wb") as f:
        shutil.copyfileobj(r, f)
    os.replace(target + ".part", target)
total = sum(os.path.getsize(os.path.join(dest, f)) for f in os.listdir(dest) if f.endswith(".whl"))
print(f"local-wheels: {len(report['install'])} wheels ({len(remote)} downloaded), {total / 2**30:.1f} GiB in {dest}")
PY
echo "$want" > "$dest/.stamp"
