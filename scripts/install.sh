#!/bin/sh
# Install mglrud for systemd (`make install`):
#   $PREFIX/lib/mglrud/{mglrud,bpf}   the package, laid out as in the repo (bpf/*.bpf.c beside it)
#   $PREFIX/bin/mglrud                 a launcher on Debian's /usr/bin/python3 (it has python3-bpfcc)
#   /etc/systemd/system/mglrud.service from deploy/mglrud.service
#   /etc/mglrud/config.yaml            from config.example.yaml, only if there is none yet
#
# Usage: scripts/install.sh
#   DESTDIR=DIR  stage everything under DIR (packaging, tests); nothing is reloaded then
#   PREFIX=DIR   default /usr/local; the unit's ExecStart follows it
#   SYSCONFDIR=DIR  default /etc (tests install into a temporary tree with PREFIX and SYSCONFDIR)
# Dependencies come from Debian (scripts/install-deps run): python3-yaml,
# python3-prometheus-client; python3-systemd and python3-bpfcc are optional.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
PY=/usr/bin/python3

lib=$DESTDIR$PREFIX/lib/mglrud
bin=$DESTDIR$PREFIX/bin
unitdir=$DESTDIR$SYSCONFDIR/systemd/system
confdir=$DESTDIR$SYSCONFDIR/mglrud

say() { printf 'install: %s\n' "$*" >&2; }

# Replace the package as a whole, so a module removed upstream does not linger.
rm -rf "$lib.new"
mkdir -p "$lib.new"
(cd "$REPO" && find mglrud bpf -type f \( -name '*.py' -o -name '*.bpf.c' -o -name '*.h' \) \
    ! -path '*/__pycache__/*' -print) | while read -r f; do
    install -D -m 0644 "$REPO/$f" "$lib.new/$f"
done
# Byte-compiled now: under ProtectSystem=strict the daemon could not write __pycache__.
"$PY" -m compileall -q -s "$lib.new" -p "$PREFIX/lib/mglrud" "$lib.new" >/dev/null
rm -rf "$lib.old"
[ -d "$lib" ] && mv "$lib" "$lib.old"
mv "$lib.new" "$lib"
rm -rf "$lib.old"
say "package -> $lib"

mkdir -p "$bin"
cat > "$bin/mglrud.tmp" <<EOF
#!$PY
# Installed by mglrud's scripts/install.sh: runs mglrud from $PREFIX/lib/mglrud on Debian's python3.
import sys
sys.path.insert(0, "$PREFIX/lib/mglrud")
from mglrud.cli import main
sys.exit(main())
EOF
chmod 0755 "$bin/mglrud.tmp"
mv "$bin/mglrud.tmp" "$bin/mglrud"
say "launcher -> $bin/mglrud"

mkdir -p "$unitdir"
sed -e "s|^ExecStart=/usr/local/bin/mglrud |ExecStart=$PREFIX/bin/mglrud |" \
    -e "s| --config /etc/mglrud/config.yaml| --config $SYSCONFDIR/mglrud/config.yaml|" "$REPO/deploy/mglrud.service" \
    > "$unitdir/mglrud.service.tmp"
chmod 0644 "$unitdir/mglrud.service.tmp"
mv "$unitdir/mglrud.service.tmp" "$unitdir/mglrud.service"
say "unit -> $unitdir/mglrud.service"

mkdir -p "$confdir"
if [ -e "$confdir/config.yaml" ]; then
    say "kept existing $confdir/config.yaml (the new example is $confdir/config.example.yaml)"
else
    install -m 0644 "$REPO/config.example.yaml" "$confdir/config.yaml"
    say "config -> $confdir/config.yaml"
fi
install -m 0644 "$REPO/config.example.yaml" "$confdir/config.example.yaml"

# Does the installed copy run, and is the config valid? (Exit 2 names the bad key.)
if ! "$PY" -c 'import yaml, prometheus_client' 2>/dev/null; then
    say "WARNING: $PY lacks yaml or prometheus_client: run scripts/install-deps run"
elif [ -z "$DESTDIR" ]; then
    "$bin/mglrud" --version >/dev/null
fi

if [ -z "$DESTDIR" ] && [ "$SYSCONFDIR" = /etc ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "systemd reloaded; start with: systemctl enable --now mglrud"
else
    say "systemd not running here (or a staged install): no daemon-reload"
fi
