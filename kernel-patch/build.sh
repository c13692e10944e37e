#!/bin/bash
# Build the mglrud test kernel: the source named in kernel-patch/BASE, the
# patches kernel-patch/*.patch applied in order, configured with virtme-ng's
# defconfig plus kernel-patch/config (and kernel-patch/debug.config for the
# "debug" variant), built out of tree as bzImage.
#
# The build directory is keyed on source version + config fragments, and a
# stamp records the patch contents: a rerun with nothing changed returns in
# seconds; a changed patch re-patches the source tree and make rebuilds only
# the files it touches.
#
# The "unpatched" variant is the same source and the default config with no
# patch at all (the baseline of the cost table, kernel-patch/README.md). It has
# its own source tree and its own lock, so building it never reverts the series
# in the tree the default and debug variants share, nor blocks their builds.
#
# Usage: kernel-patch/build.sh [default|debug|unpatched]
# Prints progress on stderr and the bzImage path as the last line of stdout.
set -euo pipefail
shopt -s nullglob

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${MGLRUD_CACHE:-/var/cache/mglrud}
VARIANT=${1:-default}
JOBS=${JOBS:-$(nproc)}

say() { printf '[kernel %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

case "$VARIANT" in
    default) FRAGMENTS=("$HERE/config") ;;
    debug)   FRAGMENTS=("$HERE/config" "$HERE/debug.config") ;;
    unpatched) FRAGMENTS=("$HERE/config") ;;
    *) die "unknown variant '$VARIANT' (expected default, debug or unpatched)" ;;
esac

# shellcheck source=/dev/null
. <(grep -E '^(package|tarball|version)=' "$HERE/BASE")
"$REPO/scripts/install-deps" kernel >&2
# One build at a time per source tree: default and debug share one, unpatched
# has its own.
TREE=linux-$version
LOCK=$CACHE/build.lock
if [ "$VARIANT" = unpatched ]; then
    TREE=linux-$version-unpatched
    LOCK=$CACHE/build-unpatched.lock
fi
mkdir -p "$CACHE"
exec 9>"$LOCK"
flock -w 3600 9 || die "another build holds $CACHE/build.lock"
export PATH=$CACHE/venv/bin:$PATH   # vng and virtme-configkernel

SRC=$CACHE/src/$TREE
if [ ! -f "$SRC/.mglrud-unpacked" ]; then
    say "unpacking $tarball into $SRC"
    rm -rf "$SRC" "$SRC.unpack"
    mkdir -p "$SRC.unpack"
    tar -C "$SRC.unpack" -xf "$tarball"
    mv "$SRC.unpack/linux-source-6.12" "$SRC"
    rmdir "$SRC.unpack"
    got=$(make -s -C "$SRC" kernelversion)
    [ "$got" = "$version" ] || die "$tarball holds $got, kernel-patch/BASE says $version"
    mkdir -p "$SRC/.mglrud-applied"
    touch "$SRC/.mglrud-unpacked"
fi

# Config key: what the .config is made from. Patch key: what the source holds.
VNG_VERSION=$(vng --version 2>/dev/null | awk '{print $2}')
CONFIG_KEY=$( { echo "$version $VNG_VERSION"; cat "${FRAGMENTS[@]}"; } | sha256sum | cut -c1-12)
PATCHES=("$HERE"/*.patch)
[ "$VARIANT" != unpatched ] || PATCHES=()
PATCH_KEY=$(cat /dev/null "${PATCHES[@]+"${PATCHES[@]}"}" | sha256sum | cut -c1-12)
BUILD=$CACHE/build/$version-$VARIANT-$CONFIG_KEY
IMAGE=$BUILD/arch/x86/boot/bzImage

if [ -f "$IMAGE" ] && [ "$(cat "$BUILD/.mglrud-stamp" 2>/dev/null)" = "$CONFIG_KEY-$PATCH_KEY" ]; then
    say "up to date: $IMAGE (config $CONFIG_KEY, patches $PATCH_KEY)"
    echo "$IMAGE"
    exit 0
fi

# Bring the source tree to exactly PATCHES: revert what is applied (newest
# first) unless it is already the same series.
applied_key=$(cat "$SRC/.mglrud-applied/KEY" 2>/dev/null || echo none)
if [ "$applied_key" != "$PATCH_KEY" ]; then
    old=("$SRC"/.mglrud-applied/*.patch)
    for (( i=${#old[@]}-1; i>=0; i-- )); do
        p=${old[$i]}
        say "reverting $(basename "$p")"
        (cd "$SRC" && git apply -R "$p") || die "cannot revert $(basename "$p"); delete $SRC to start over"
        rm "$p"
    done
    for p in "${PATCHES[@]+"${PATCHES[@]}"}"; do
        name=$(basename "$p")
        (cd "$SRC" && git apply --check "$p" 2>/dev/null) \
            || die "patch $name does not apply to linux $version: $(cd "$SRC" && git apply --check "$p" 2>&1 | head -1)"
        say "applying $name"
        (cd "$SRC" && git apply "$p")
        cp "$p" "$SRC/.mglrud-applied/$name"
    done
    echo "$PATCH_KEY" > "$SRC/.mglrud-applied/KEY"
fi

mkdir -p "$BUILD"
if [ ! -f "$BUILD/.mglrud-config-done" ]; then
    say "configuring $VARIANT kernel in $BUILD"
    frag=$BUILD/mglrud.fragment
    # Fragments carry a comment on every line; kconfig wants bare assignments.
    sed -e 's/[[:space:]]*#.*$//' -e '/^$/d' "${FRAGMENTS[@]}" > "$frag"
    (cd "$SRC" && virtme-configkernel --defconfig --custom "$frag" "O=$BUILD") > "$BUILD/config.log" 2>&1 \
        || { tail -20 "$BUILD/config.log" >&2; die "configuration failed (log: $BUILD/config.log)"; }
    # virtme appends its own options after ours; ours must win.
    cat "$frag" >> "$BUILD/.config"
    make -C "$SRC" "O=$BUILD" olddefconfig >> "$BUILD/config.log" 2>&1
    missing=0
    while IFS='=' read -r key want; do
        if [ "$want" = n ]; then
            grep -qE "^$key=" "$BUILD/.config" && { say "config: $key is set, fragment wants it off"; missing=1; }
        else
            grep -qxF "$key=$want" "$BUILD/.config" || { say "config: $key=$want did not stick: $(grep -E "^(# )?$key[= ]" "$BUILD/.config" || echo absent)"; missing=1; }
        fi
    done < "$frag"
    [ "$missing" = 0 ] || die "the config fragment does not hold (see above); fix kernel-patch/config"
    touch "$BUILD/.mglrud-config-done"
fi

say "building bzImage with $JOBS jobs (log: $BUILD/build.log)"
start=$(date +%s)
make -C "$SRC" "O=$BUILD" -j"$JOBS" bzImage > "$BUILD/build.log" 2>&1 &
pid=$!
ticks=0
while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    ticks=$((ticks + 1))
    [ $((ticks % 30)) = 0 ] || continue
    kill -0 "$pid" 2>/dev/null || break
    n=$(grep -cE '^\s+CC ' "$BUILD/build.log" || true)
    last=$(grep -E '^\s+[A-Z]+ ' "$BUILD/build.log" | tail -1 | sed 's/^ *//')
    say "$(( $(date +%s) - start ))s: $n files compiled; last: $last"
done
if ! wait "$pid"; then
    grep -E 'error|Error' "$BUILD/build.log" | head -20 >&2
    die "kernel build failed (log: $BUILD/build.log)"
fi
if grep -E 'warning:' "$BUILD/build.log" | grep -q 'mm/'; then
    say "warnings in mm/:"; grep -E '^.*mm/.*warning:' "$BUILD/build.log" >&2 || true
fi
echo "$CONFIG_KEY-$PATCH_KEY" > "$BUILD/.mglrud-stamp"
say "built $IMAGE in $(( $(date +%s) - start ))s"
echo "$IMAGE"
