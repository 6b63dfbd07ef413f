#!/usr/bin/env bash
# Overload: joins driven to 2× what the relay admits, loopback only. Shows that the excess is
# refused (503 + Retry-After) and that no viewer that joined loses media.
#
#   ffmpeg -re -c copy (1 Mb/s H.264 clip, 640x360 30 fps, 2 s GOP) ──RTMP──► deltacast (core 0)
#                                   [sfu] workers = 1, max_viewers = $CAP, admit_max_busy_pct = $BUSY
#   deltacast-load run --webrtc-mode full --json (core 1): $N str0m viewers joining at $JOIN_RATE/s,
#   full ICE + DTLS + SRTP, held for the window; the results hold every refusal and every joined
#   viewer's whole-life loss.
#
# usage: loadtest/bench-overload.sh [window-seconds]
# env:   CAP=150 (sfu.max_viewers)  N=2*CAP (viewers asked for)  BUSY=85 (sfu.admit_max_busy_pct)
#        JOIN_RATE=100  LOAD_THREADS=2  RELAY_BIN / LOAD_BIN: prebuilt binaries (then nothing is built)
set -euo pipefail
win=${1:-20}
cap=${CAP:-150}
n=${N:-$((2 * cap))}
busy=${BUSY:-85}
join_rate=${JOIN_RATE:-100}
threads=${LOAD_THREADS:-2}
cd "$(dirname "$0")/.."
for tool in ffmpeg curl taskset python3; do
    command -v $tool >/dev/null || { echo "bench-overload: $tool is required" >&2; exit 1; }
done
relay_bin=${RELAY_BIN:-target/release/deltacast}
load_bin=${LOAD_BIN:-target/release/deltacast-load}
if [ -z "${RELAY_BIN:-}${LOAD_BIN:-}" ]; then
    cargo build --release -p deltacast -p deltacast-load --bin deltacast --bin deltacast-load >/dev/null
fi
ncpu=$(nproc)
relay_core=0
load_core=$((ncpu > 1 ? 1 : 0))
work=$(mktemp -d /tmp/bench-overload.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT

clip=$work/clip.flv
AUDIO=0 loadtest/make-clip.sh "$clip"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port); rtmp=$(free_port)
cat >"$work/relay.toml" <<CFG
[server]
http_listen = "127.0.0.1:$http"
[rtmp]
listen = "127.0.0.1:$rtmp"
[sfu]
workers = 1
bind_ip = "127.0.0.1"
port_base = 0
max_viewers = $cap
max_pending_per_ip = 256
admit_max_busy_pct = $busy
[[streams]]
name = "bench"
keys = ["benchkey"]
CFG
DELTACAST_LOG=warn taskset -c $relay_core "$relay_bin" serve --config "$work/relay.toml" 2>"$work/relay.log" &
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
echo "── max_viewers $cap, admit_max_busy_pct $busy: $n viewers at $join_rate/s ──"
taskset -c $load_core "$load_bin" run --url "http://127.0.0.1:$http" --stream bench --webrtc "$n" \
    --duration "$win" --ramp "$join_rate" --webrtc-mode full --webrtc-threads "$threads" \
    --server-pid "$relay" --max-failed-joins "$n" --quiet --json "$work/report.json" || true
curl -s "http://127.0.0.1:$http/metrics" | grep -E '^deltacast_sfu_(joins_refused_total|worker_busy_ratio|worker_loop_lag_seconds|viewers_dropped_total|viewer_slots)'
python3 - "$work/report.json" <<'PY'
import json, sys, collections
r = json.load(open(sys.argv[1]))["webrtc"]
v = r["viewers"]
r["ice_disconnected"] = sum(x["ice_disconnected"] for x in v)
r["stalled"] = sum(1 for x in v if (x["last_packet_before_end_ms"] or 1e9) > 1000)
r["worst_loss_pct"] = max([x["loss_pct"] for x in v] or [0.0])
print(f"joined {r['joined']}, refused {r['refused_503']} (503, {r['refused_503_with_retry_after']} with Retry-After), other failures {r['failed_other']}")
print(f"joined viewers that kept their media: {r['kept_media']} of {r['joined']}; ICE drops {r['ice_disconnected']}, stalled {r['stalled']}, worst life loss {r['worst_loss_pct']:.3f} %")
if v:
    lost = sum(x["lost"] for x in v); exp = sum(x["expected"] for x in v)
    print(f"joined viewers' packets over their whole life: {exp} expected, {lost} lost ({100*lost/max(exp,1):.4f} %)")
c = collections.Counter((x["status"], x["retry_after"], x["body"].split(":")[0]) for x in r["refused"])
for (st, ra, body), k in c.most_common(4):
    print(f"  ×{k}: {st}, Retry-After {ra}: {body}…")
if r["refused"]:
    print("first refusal in full:", r["refused"][0]["body"])
PY
grep -m5 -E 'capped|WARN|ERROR' "$work/relay.log" || true
echo "machine: $ncpu cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
