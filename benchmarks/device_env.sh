#!/usr/bin/env bash
# Source this on a GPU machine that has torch but not isovol's other dependencies (see BENCHMARKS.md):
#   source benchmarks/device_env.sh && python benchmarks/dgean_gpu.py --data devdata
# It installs the carried wheels (.whl/, fetched here with ../shared/tools/device-wheels.sh) into /tmp/site
# and makes the source tree importable as the isovol namespace, the way setup.cfg installs it.
# Each step returns non-zero on failure: `set -e` does nothing on the left of `&&`, where this is sourced.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$root"/.whl/*.whl || { echo "device_env.sh: installing the wheels in $root/.whl failed" >&2; return 1; }
mkdir -p /tmp/ns/isovol || return 1
for d in pipeline workflows deploy; do ln -sfn "$root/$d" "/tmp/ns/isovol/$d"; done
export PYTHONPATH=/tmp/site:/tmp/ns
export PYTHONUNBUFFERED=1
