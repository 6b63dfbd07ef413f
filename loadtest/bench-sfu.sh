#!/usr/bin/env bash
# WebRTC SFU under WHEP viewer load, epoll vs io_uring (and UDP GSO on vs off) in one run,
# loopback only.
#
#   ffmpeg -re -c copy (1 Mb/s H.264 clip, 640x360 30 fps, 2 s GOP) ──RTMP──► deltacast (core 0)
#                                   [sfu] workers = 1, --sfu-io epoll|uring, --sfu-gso on|off
#   deltacast-load run (core 1): N str0m viewers, full ICE + DTLS + SRTP, one UDP socket each
#   (--webrtc-mode full by default; MODE=fast counts the cleartext RTP headers instead)
#
# For every driver, GSO setting and viewer count a fresh relay is started (so RSS at 0 viewers is
# a clean baseline), the publisher runs for a GOP, the load generator joins N viewers at
# the ramp, holds them for the window and writes its JSON results; the table below collects them.
#
# usage: loadtest/bench-sfu.sh [window-seconds] [viewer counts...]   (default: 20 50 200 500)
# env:   DRIVERS="epoll uring"  JOIN_RATE=200  LOAD_THREADS=2  MODE=full|fast
#        GSO="on off": run each driver with sfu.gso on and off (default: the config default only);
#        every driver runs with every GSO mode, in the order given (drivers outer, modes inner)
#        RELAY_BIN / LOAD_BIN: prebuilt binaries (then nothing is built)
set -euo pipefail
win=${1:-20}
shift || true
counts=${*:-"50 200 500"}
drivers=${DRIVERS:-"epoll uring"}
gso_modes=${GSO:-default}
join_rate=${JOIN_RATE:-200}
threads=${LOAD_THREADS:-2}
mode=${MODE:-full}
cd "$(dirname "$0")/.."
for tool in ffmpeg curl taskset; do
    command -v $tool >/dev/null || { echo "bench-sfu: $tool is required" >&2; exit 1; }
done
relay_bin=${RELAY_BIN:-target/release/deltacast}
load_bin=${LOAD_BIN:-target/release/deltacast-load}
if [ -z "${RELAY_BIN:-}${LOAD_BIN:-}" ]; then
    cargo build --release -p deltacast -p deltacast-load --bin deltacast --bin deltacast-load >/dev/null
fi

ncpu=$(nproc)
relay_core=0
load_core=$((ncpu > 1 ? 1 : 0))

work=$(mktemp -d /tmp/bench-sfu.XXXXXX)
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

# A 1 Mb/s, 30 fps, 2 s GOP clip (testsrc + a little temporal noise, else x264 needs only ~0.6 Mb/s
# for testsrc), encoded once; the publisher sends it with -c copy (no encoder
# competing for the cores during the measurement).
clip=$work/clip.flv
AUDIO=0 loadtest/make-clip.sh "$clip"
echo "clip: $(ffprobe -v error -show_entries format=bit_rate -of csv=p=0 "$clip") b/s video"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

results=$work/results.txt
: >"$results"
for drv in $drivers; do
    for gso in $gso_modes; do
        gso_arg=()
        [ "$gso" = default ] || gso_arg=(--sfu-gso "$gso")
        for n in $counts; do
            http=$(free_port); rtmp=$(free_port)
            cfg=$work/sfu-$drv-$gso-$n.toml
            cat >"$cfg" <<EOF
[server]
http_listen = "127.0.0.1:$http"
[rtmp]
listen = "127.0.0.1:$rtmp"
[sfu]
workers = 1
bind_ip = "127.0.0.1"
port_base = 0
max_viewers = 6000
[[streams]]
name = "bench"
keys = ["benchkey"]
EOF
            log=$work/relay-$drv-$gso-$n.log
            DELTACAST_LOG=warn taskset -c $relay_core "$relay_bin" serve --config "$cfg" \
                --sfu-io "$drv" "${gso_arg[@]}" 2>"$log" &
            relay=$!; pids+=($relay)
            for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
            taskset -c $load_core ffmpeg -hide_banner -loglevel error -nostdin -re -stream_loop -1 \
                -i "$clip" -c copy -f flv "rtmp://127.0.0.1:$rtmp/live/benchkey" &
            pids+=($!)
            for _ in $(seq 100); do
                curl -sf "http://127.0.0.1:$http/api/v1/streams/bench" | grep -q '"state":"publishing"' && break
                sleep 0.1
            done
            sleep 3
            echo "── $drv, gso $gso, $n viewers ──"
            json=$work/run-$drv-$gso-$n.json
            taskset -c $load_core "$load_bin" run --url "http://127.0.0.1:$http" \
                --stream bench --webrtc "$n" --duration "$win" --ramp "$join_rate" \
                --webrtc-mode "$mode" --webrtc-threads "$threads" --server-pid "$relay" \
                --quiet --json "$json" || true
            echo "$drv $gso $n $json" >>"$results"
            grep -m3 GSO "$log" || true  # e.g. the kernel refusing UDP GSO
            stop_all
            sleep 1
        done
    done
done

echo
python3 - "$results" <<'PY'
import json, sys
cols = "driver gso viewers joined pkt/s loss% reord% ttff-p50 relay% RSS-MiB KB/view gen% us/pkt".split()
print(("{:<8}" * len(cols)).format(*cols))
for line in open(sys.argv[1]):
    drv, gso, n, path = line.split()
    try:
        r = json.load(open(path))
    except Exception:
        print(f"{drv:<8}{gso:<8}{n:<8}failed"); continue
    t, w = r["totals"], r["totals"]["webrtc"]
    ser = r["series"]
    hold = ser[-int(r["config"]["duration"]):] or ser
    pps = sum(s["pkts"] for s in hold) / max(len(hold), 1)
    ff = sorted(r["first_frame_ms"]); p50 = ff[len(ff) // 2] if ff else float("nan")
    rss0, rss1 = t["server_rss_first_kib"] or 0, t["server_rss_last_kib"] or 0
    cpu = sum(s["server_cpu_pct"] or 0 for s in hold) / max(len(hold), 1)
    gen = sum(s["load_cpu_pct"] for s in hold) / max(len(hold), 1)
    print(("{:<8}" * len(cols)).format(drv, gso, n, w["joined"], f"{pps:.0f}", f"{w['loss_pct']:.3f}",
        f"{100 * w['reordered'] / max(w['packets'], 1):.2f}", f"{p50:.0f}", f"{cpu:.1f}", f"{rss1 / 1024:.0f}",
        f"{(rss1 - rss0) / max(w['joined'], 1):.1f}", f"{gen:.0f}", f"{t['load_cpu_us_per_packet'] or 0:.2f}"))
PY
echo "columns: pkt/s = RTP packets/s received over the hold; loss = unique sequence numbers missing over"
echo "  the run; reord = arrived behind a higher sequence number; ttff-p50 = POST -> first complete frame;"
echo "  relay% = whole relay process (/proc/PID/stat) over the hold; RSS-MiB = relay RSS at the end;"
echo "  KB/view = (RSS(end) - RSS(first second)) / joined; gen% = load tool CPU; us/pkt = load tool CPU per packet"
echo "relay on core $relay_core, load generator + publisher on core $load_core"
echo "machine: $ncpu cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
