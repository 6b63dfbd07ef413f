#!/usr/bin/env bash
# The effect of the SFU workers' socket buffers (what net.core.rmem_max / wmem_max let
# [sfu] socket_recv_buffer / socket_send_buffer have) under WHEP load, before/after in one run.
#
# Runs loadtest/bench-sfu.sh (epoll driver, one worker) with the relay's worker sockets at
#   212992 B: what a kernel at its default rmem_max / wmem_max grants whatever the config asks,
#   4 MiB:    the [sfu] default, granted once tuning/sysctl-deltacast.conf is applied,
# alternating, REPEAT times, and prints the median of each column per buffer size and viewer count.
#
# usage: tuning/bench-buffers.sh [window-seconds] [viewer counts...]   (default: 15 400 800)
# env:   REPEAT=3; RELAY_BIN / LOAD_BIN: prebuilt binaries (default target/release/…)
set -euo pipefail
win=${1:-15}
shift || true
counts=${*:-"400 800"}
repeat=${REPEAT:-3}
cd "$(dirname "$0")/.."
relay=$(realpath "${RELAY_BIN:-target/release/deltacast}")
load=$(realpath "${LOAD_BIN:-target/release/deltacast-whep-load}")
if [ ! -x "$relay" ] || [ ! -x "$load" ]; then
    cargo build --release -p deltacast -p deltacast-load --bin deltacast --bin deltacast-whep-load >/dev/null
fi
work=$(mktemp -d /tmp/bench-buffers.XXXXXX)
trap 'rm -rf "$work"' EXIT
rows=$work/rows
: >"$rows"
for r in $(seq "$repeat"); do
    for buf in 212992 4194304; do
        # bench-sfu.sh starts "$RELAY_BIN serve --config FILE …": the wrapper adds the buffer
        # sizes to that file and execs the relay (same pid, so its CPU is still measured).
        wrapper=$work/relay-$buf
        cat >"$wrapper" <<WRAP
#!/bin/sh
sed -i 's/^\[sfu\]\$/[sfu]\nsocket_recv_buffer = $buf\nsocket_send_buffer = $buf/' "\$3"
exec "$relay" "\$@"
WRAP
        chmod +x "$wrapper"
        echo "=== run $r/$repeat: worker socket buffers $buf B ==="
        out=$(RELAY_BIN=$wrapper LOAD_BIN=$load DRIVERS=epoll loadtest/bench-sfu.sh "$win" $counts 2>&1)
        echo "$out" | grep -E '^(driver|epoll|machine)'
        echo "$out" | grep '^epoll ' | sed "s/^/$buf /" >>"$rows"
    done
done
echo
echo "medians over $repeat runs (columns as loadtest/bench-sfu.sh prints them):"
python3 - "$rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
# buf driver gso viewers playing pkt/s loss/reord p50 p99 max ttff relay% sfu% pkt/s/core KB/view gen% drops(v/r)
print(f"{'buffer':>8} {'viewers':>7} {'playing':>7} {'loss%':>7} {'p50ms':>7} {'p99ms':>7} {'maxms':>7} {'relay%':>7} {'sfu%':>7} {'drops v/r':>12}")
def med(vals):
    try:
        return f"{statistics.median(float(v) for v in vals):.2f}"
    except ValueError:
        return "-"
for buf in sorted({r[0] for r in rows}, key=int):
    for n in sorted({r[3] for r in rows if r[0] == buf}, key=int):
        rs = [r for r in rows if r[0] == buf and r[3] == n]
        col = lambda i: [r[i] for r in rs if len(r) > i]
        loss = [v.split('/')[0] for v in col(6)]
        drops = [v.split('/') for v in col(16)]
        dv = med([d[0] for d in drops if len(d) == 2]); dr = med([d[1] for d in drops if len(d) == 2])
        print(f"{buf:>8} {n:>7} {med(col(4)):>7} {med(loss):>7} {med(col(7)):>7} {med(col(8)):>7} {med(col(9)):>7} {med(col(11)):>7} {med(col(12)):>7} {dv + '/' + dr:>12}")
PY
echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
