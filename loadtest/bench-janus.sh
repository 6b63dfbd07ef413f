#!/usr/bin/env bash
# WebRTC side by side: deltacast (WHEP) against Janus 1.1 (streaming plugin), same program, same
# viewer counts, same load tool, one run.
#
#   netns dcjb: veth0 10.77.0.1/24 (+ 10.77.0.2-61 as the load tool's source addresses)
#   Janus gathers no ICE candidates on loopback, hence a namespace with a veth pair.
#
#   clip (testsrc + noise, H.264 constrained baseline 1 Mb/s, 30 fps, 2 s GOP; 48 kb/s audio)
#     deltacast: ffmpeg -c copy → RTMP (AAC, bridged to Opus once by the relay)
#     Janus:     ffmpeg -c copy → RTP (Opus, pre-encoded) to the streaming plugin's mountpoint
#   server on core 0, feed + deltacast-load (fast mode) on core 1; a fresh server for every
#   count, servers alternated per count so both see the same machine state.
#
# usage (root): loadtest/bench-janus.sh [window-seconds] [viewer counts...]   (default: 20 100 300 600 900)
# env: RAMP=100  SERVERS="deltacast janus"  RELAY_BIN / LOAD_BIN (prebuilt binaries)
set -euo pipefail
win=${1:-20}
shift || true
counts=${*:-"100 300 600 900"}
servers=${SERVERS:-"deltacast janus"}
ramp=${RAMP:-100}
cd "$(dirname "$0")/.."
root=$PWD
for tool in ffmpeg janus ip taskset python3; do
    command -v $tool >/dev/null || { echo "bench-janus: $tool is required (apt-get install ffmpeg janus iproute2)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "bench-janus: needs root (network namespace)" >&2; exit 1; }
relay_bin=${RELAY_BIN:-target/release/deltacast}
load_bin=${LOAD_BIN:-target/release/deltacast-load}
if [ -z "${RELAY_BIN:-}${LOAD_BIN:-}" ]; then
    cargo build --release -p deltacast -p deltacast-load --bin deltacast --bin deltacast-load >/dev/null
fi
relay_bin=$(realpath "$relay_bin"); load_bin=$(realpath "$load_bin")

ns=dcjb$$
ip=10.77.0.1
work=$(mktemp -d /tmp/bench-janus.XXXXXX)
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; ip netns del $ns 2>/dev/null; rm -rf "$work"' EXIT
ip netns add $ns
ip -n $ns link set lo up
ip -n $ns link add veth0 type veth peer name veth1
ip -n $ns addr add $ip/24 dev veth0
for i in $(seq 2 61); do ip -n $ns addr add 10.77.0.$i/32 dev veth0; done
ip -n $ns link set veth0 up
ip -n $ns link set veth1 up
# Background processes are started with `ip netns exec` itself (not a shell function), so that
# $! is the process (ip netns exec and taskset exec into it) and kill reaches it.
inns() { ip netns exec $ns "$@"; }

PROFILE=baseline loadtest/make-clip.sh "$work/clip.flv"
ffmpeg -hide_banner -loglevel error -i "$work/clip.flv" -c:v copy -c:a libopus -b:a 48k -ar 48000 -ac 2 \
    "$work/clip.mkv"
echo "clip: $(ffprobe -v error -show_entries format=bit_rate -of csv=p=0 "$work/clip.flv") b/s"

cfgdir=$work/janus
mkdir -p "$cfgdir"
for f in loadtest/janus/*.jcfg; do
    sed -e "s#@CONFIGS@#$cfgdir#; s#@IFACE@#veth0#; s#@BIND@#$ip#" "$f" >"$cfgdir/$(basename "$f")"
done

wait_http() { for _ in $(seq 100); do inns curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }

start_deltacast() {
    cat >"$work/dc.toml" <<TOML
[server]
http_listen = "$ip:8080"
[rtmp]
listen = "$ip:1935"
[sfu]
workers = 1
bind_ip = "$ip"
port_base = 0
max_viewers = 6000
[[streams]]
name = "bench"
keys = ["benchkey"]
TOML
    DELTACAST_LOG=warn ip netns exec $ns taskset -c 0 "$relay_bin" serve --config "$work/dc.toml" 2>"$work/dc.log" &
    server=$!; pids+=($server)
    wait_http "http://$ip:8080/healthz"
    ip netns exec $ns taskset -c 1 ffmpeg -hide_banner -loglevel error -nostdin -re -stream_loop -1 -i "$work/clip.flv" \
        -c copy -f flv "rtmp://$ip:1935/live/benchkey" &
    pids+=($!)
    for _ in $(seq 100); do
        inns curl -sf "http://$ip:8080/api/v1/streams/bench" | grep -q '"state":"publishing"' && break
        sleep 0.1
    done
    target=(--url "http://$ip:8080" --stream bench)
}

start_janus() {
    ip netns exec $ns taskset -c 0 janus -F "$cfgdir" -C "$cfgdir/janus.jcfg" >"$work/janus.log" 2>&1 &
    server=$!; pids+=($server)
    for _ in $(seq 100); do
        inns curl -sf -o /dev/null -XPOST "http://$ip:8088/janus" -d '{"janus":"info","transaction":"x"}' && break
        sleep 0.1
    done
    ip netns exec $ns taskset -c 1 ffmpeg -hide_banner -loglevel error -nostdin -re -stream_loop -1 -i "$work/clip.mkv" \
        -map 0:v -c copy -payload_type 96 -f rtp "rtp://$ip:5004?pkt_size=1200" \
        -map 0:a -c copy -payload_type 111 -f rtp "rtp://$ip:5002" >/dev/null &
    pids+=($!)
    target=(--url "http://$ip:8088/janus" --janus-mountpoint 1)
}

printf '%-10s %-7s %-7s %-7s %-8s %-9s %-9s %-10s %-9s %-6s\n' server viewers joined dropped "loss%" "cpu%" "rss MiB" "KiB/view" "cpu%/100v" verdict | tee "$work/table"
for n in $counts; do
    for srv in $servers; do
        "start_$srv"
        sleep 3
        rss0=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
        json=$work/$srv-$n.json
        inns taskset -c 1 "$load_bin" run "${target[@]}" --allow-remote --webrtc "$n" --ramp "$ramp" \
            --duration "$win" --bind-range 10.77.0.2-10.77.0.61 --server-pid "$server" --quiet \
            --label "$srv-$n" --json "$json" >"$work/$srv-$n.out" 2>&1 || true
        python3 - "$json" "$srv" "$n" "$rss0" <<'PY' | tee -a "$work/table"
import json, sys
path, srv, n, rss0 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
try:
    r = json.load(open(path))
except Exception as e:
    print(f"{srv:<10} {n:<7} no result ({e})"); sys.exit()
t = r["totals"]; w = t["webrtc"]
cpu = t.get("server_cpu_avg_pct") or 0.0
rss = (t.get("server_rss_last_kib") or 0)
joined = max(w["joined"], 1)
print(f"{srv:<10} {n:<7} {w['joined']:<7} {w['dropped']:<7} {w['loss_pct']:<8.3f} {cpu:<9.1f} "
      f"{rss/1024:<9.1f} {(rss-rss0)/joined:<10.1f} {cpu/joined*100:<9.2f} "
      f"{'pass' if r['verdict']['passed'] else 'FAIL'}")
PY
        stop_all
        sleep 1
    done
done
echo "server on core 0 (process-wide CPU, all threads), feed + load tool on core 1; window ${win}s after the ramp"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
