#!/bin/bash
# Capture real kernel output (lru_gen, lru_gen_full, sysfs, cgroup and /proc
# files of known workloads) from the test guest into tests/fixtures/roots/.
# Two captures: a one-node guest and a two-node guest.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
out=$(mktemp -d /tmp/mglrud-capture.XXXXXX)
"$HERE/vm-run.sh" --out "$out" --exec "python3 tests/vm/capture_fixtures.py $out vm-1node"
"$HERE/vm-run.sh" --numa --out "$out" --exec "python3 tests/vm/capture_fixtures.py $out vm-2node"
mkdir -p "$REPO/tests/fixtures/roots"
for name in vm-1node vm-2node; do
    rm -rf "$REPO/tests/fixtures/roots/$name"
    cp -r "$out/$name" "$REPO/tests/fixtures/roots/$name"
    echo "tests/fixtures/roots/$name"
done
