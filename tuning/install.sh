#!/usr/bin/env bash
# Install deltacast on a node (or into a staging tree), or check an installed one.
#
#   tuning/install.sh [--bin PATH]           install (as root), then apply the sysctls
#   DESTDIR=/tmp/stage tuning/install.sh     stage the same tree under /tmp/stage (no root needed;
#                                            nothing is applied or reloaded)
#   tuning/install.sh --check                check the installed tree (also under DESTDIR): every
#                                            file present and current, the config valid, the
#                                            unit verified by systemd-analyze when it is there
#
# What goes where (DESTDIR prefixed):
#   /usr/bin/deltacast                      the binary (--bin, default target/release/deltacast)
#   /etc/deltacast/deltacast.toml           tuning/deltacast.toml, kept when it already exists
#   /etc/systemd/system/deltacast.service   tuning/deltacast.service
#   /etc/sysctl.d/60-deltacast.conf         tuning/sysctl-deltacast.conf
#   /usr/share/deltacast/web/…/hls.light.min.js the watch page's player (after `npm ci --prefix web`)
#   /usr/share/doc/deltacast/TUNING.md      tuning/README.md
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
dest=${DESTDIR:-}
bin=$repo/target/release/deltacast
check=0
while (($#)); do
    case $1 in
        --check) check=1 ;;
        --bin) bin=${2:?--bin needs a path}; shift ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# source → installed path, mode
files=(
    "$bin|/usr/bin/deltacast|0755"
    "$here/deltacast.service|/etc/systemd/system/deltacast.service|0644"
    "$here/sysctl-deltacast.conf|/etc/sysctl.d/60-deltacast.conf|0644"
    "$here/README.md|/usr/share/doc/deltacast/TUNING.md|0644"
)
# The watch page is compiled in; hls.js (its LL-HLS player) is read from web.dir at run time.
hls=web/node_modules/hls.js/dist/hls.light.min.js
if [ -f "$repo/$hls" ]; then
    files+=("$repo/$hls|/usr/share/deltacast/$hls|0644")
elif ((!check)); then
    echo "install.sh: $repo/$hls absent (npm ci --prefix web): the watch page will lack its LL-HLS player" >&2
fi
config=/etc/deltacast/deltacast.toml

if ((check)); then
    bad=0
    for e in "${files[@]}"; do
        IFS='|' read -r src dst _ <<<"$e"
        if [ ! -f "$dest$dst" ]; then
            echo "missing: $dest$dst" >&2; bad=1
        elif [ -f "$src" ] && ! cmp -s "$src" "$dest$dst"; then
            echo "differs from $src: $dest$dst" >&2; bad=1
        fi
    done
    if [ -f "$dest$config" ] && [ -x "$dest/usr/bin/deltacast" ]; then
        "$dest/usr/bin/deltacast" check-config --config "$dest$config" >/dev/null || {
            echo "invalid config: $dest$config" >&2; bad=1; }
    else
        echo "missing: $dest$config" >&2; bad=1
    fi
    unit=$dest/etc/systemd/system/deltacast.service
    if command -v systemd-analyze >/dev/null && [ -f "$unit" ]; then
        # Verified with its paths pointing into DESTDIR (verify checks that ExecStart exists).
        # systemd-analyze warns about unknown or malformed keys but exits 0: any output fails.
        tmp=$(mktemp -d)
        sed "s|/usr/bin/deltacast|$dest/usr/bin/deltacast|g" "$unit" >"$tmp/deltacast.service"
        if ! out=$(systemd-analyze verify "$tmp/deltacast.service" 2>&1) || [ -n "$out" ]; then
            echo "systemd-analyze verify $unit:" >&2; echo "$out" >&2; bad=1
        fi
        rm -rf "$tmp"
    elif ! command -v systemd-analyze >/dev/null; then
        echo "note: systemd-analyze not found; the unit was not verified" >&2
    fi
    ((bad)) && { echo "install.sh --check: the installed tree differs (above)" >&2; exit 1; }
    echo "install.sh --check: ${dest:-/} is current"
    exit 0
fi

[ -x "$bin" ] || {
    echo "install.sh: no binary at $bin: run 'cargo build --release' or pass --bin PATH" >&2
    exit 1
}
if [ -z "$dest" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: installing into / needs root (or set DESTDIR= to stage)" >&2
    exit 1
fi
for e in "${files[@]}"; do
    IFS='|' read -r src dst mode <<<"$e"
    install -D -m "$mode" "$src" "$dest$dst"
done
if [ -e "$dest$config" ]; then
    echo "kept $dest$config (tuning/deltacast.toml is the example)"
else
    install -D -m 0644 "$here/deltacast.toml" "$dest$config"
fi
echo "installed into ${dest:-/}"
if [ -z "$dest" ]; then
    sysctl --system >/dev/null && echo "applied /etc/sysctl.d/60-deltacast.conf"
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        echo "next: edit $config, then: systemctl enable --now deltacast; deltacast doctor --config $config"
    fi
fi
