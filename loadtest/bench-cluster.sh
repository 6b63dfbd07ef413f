#!/usr/bin/env bash
# Viewers across a three-node local cluster against one node (docs/BENCHMARKS.md "Cluster").
#
#   loadtest/bench-cluster.sh WINDOW N...       e.g. loadtest/bench-cluster.sh 20 900 1800 2700
#
# For each N, two runs with the same load-tool settings:
#   one    one node (127.0.0.2, `sfu.workers = 1`, pinned to core 0), N WHEP viewers on it;
#   three  a real redis-server and three nodes with `[cluster]` (A origin 127.0.0.2, B and C edges
#          127.0.0.3/.4, `sfu.workers = 1` each), N/3 viewers on each node from three load-tool
#          processes started together (the tool does not follow 307; the playback API's placement
#          is tested in tests/cluster_e2e.rs), merged with `deltacast-load merge`; each joins at
#          RAMP/3 per second, so the cluster's viewers join at the single node's rate.
# ffmpeg publishes a pre-encoded 1 Mb/s 640x360 30 fps H.264 clip (-re -c copy) to the origin.
# Pinning: the relays on core 0 (one node, or all three nodes together), the load tools and
# ffmpeg on core 1. The three nodes share the one node's core: the run shows what splitting an
# audience over nodes costs (the pulls, three processes), not what more cores give.
# RELAY_BIN / LOAD_BIN pick binaries (default target/release/..., built if both unset).
set -euo pipefail
win=${1:-20}
shift || true
counts=${*:-"600 1200"}
only=${ONLY:-"one three"}
ramp=${RAMP:-200}
mode=${MODE:-fast}
cd "$(dirname "$0")/.."
for tool in ffmpeg curl taskset redis-server python3; do
    command -v $tool >/dev/null || { echo "bench-cluster: $tool is required" >&2; exit 1; }
done
relay_bin=${RELAY_BIN:-target/release/deltacast}
load_bin=${LOAD_BIN:-target/release/deltacast-load}
if [ -z "${RELAY_BIN:-}${LOAD_BIN:-}" ]; then
    cargo build --release -p deltacast -p deltacast-load --bin deltacast --bin deltacast-load >/dev/null
fi

work=$(mktemp -d /tmp/bench-cluster.XXXXXX)
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

clip=$work/clip.flv
AUDIO=0 loadtest/make-clip.sh "$clip"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "no answer: $1" >&2; return 1; }

# node NAME IP CORE CLUSTER_TOML -> sets $node_http, $node_rtmp, $node_pid
node() {
    local name=$1 ip=$2 core=$3 cluster=$4
    node_http=$(free_port); node_rtmp=$(free_port)
    cat >"$work/$name.toml" <<EOF
[server]
http_listen = "$ip:$node_http"
[rtmp]
listen = "$ip:$node_rtmp"
[sfu]
workers = 1
bind_ip = "$ip"
port_base = 0
ice_tcp_port_base = 0
max_viewers = 6000
$cluster
EOF
    DELTACAST_LOG=warn taskset -c "$core" "$relay_bin" serve --config "$work/$name.toml" \
        2>"$work/$name.log" &
    node_pid=$!; pids+=($node_pid)
    wait_http "http://$ip:$node_http/healthz"
}

publish() {
    taskset -c 1 ffmpeg -hide_banner -loglevel error -nostdin -re -stream_loop -1 \
        -i "$clip" -c copy -f flv "rtmp://$1/live/bench" &
    pids+=($!)
    for _ in $(seq 100); do
        curl -sf "http://$2/api/v1/streams/bench" | grep -q '"state":"publishing"' && break
        sleep 0.1
    done
    sleep 3
}

load() { # URL PID N JSON RAMP
    taskset -c 1 "$load_bin" run --url "$1" --stream bench --webrtc "$3" --duration "$win" \
        --ramp "$5" --webrtc-mode "$mode" --server-pid "$2" --quiet --json "$4" >/dev/null || true
}

results=$work/results.txt
: >"$results"
for n in $counts; do
  if [[ " $only " == *" one "* ]]; then
    echo "── one node, $n viewers ──"
    node one 127.0.0.2 0 ""
    publish "127.0.0.2:$node_rtmp" "127.0.0.2:$node_http"
    load "http://127.0.0.2:$node_http" "$node_pid" "$n" "$work/one-$n.json" "$ramp"
    echo "one $n $work/one-$n.json" >>"$results"
    stop_all; sleep 1
  fi
  if [[ " $only " == *" three "* ]]; then
    echo "── three nodes, $n viewers ──"
    rport=$(free_port)
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
    declare -A http pid
    for spec in "a 127.0.0.2 0" "b 127.0.0.3 0" "c 127.0.0.4 0"; do
        set -- $spec
        node "$1" "$2" "$3" "[cluster]
redis = \"redis://127.0.0.1:$rport\"
node_id = \"$1\""
        http[$1]="$2:$node_http"; pid[$1]=$node_pid
        [ "$1" = a ] && a_rtmp="$2:$node_rtmp"
    done
    publish "$a_rtmp" "${http[a]}"
    third=$((n / 3))
    loads=()
    for id in a b c; do
        load "http://${http[$id]}" "${pid[$id]}" "$third" "$work/three-$n-$id.json" $((ramp / 3)) &
        loads+=($!)
    done
    for p in "${loads[@]}"; do wait "$p" || true; done
    curl -s "http://${http[b]}/api/v1/cluster" >"$work/three-$n-cluster.json"
    "$load_bin" merge "$work/three-$n-a.json" "$work/three-$n-b.json" "$work/three-$n-c.json" \
        --out "$work/three-$n.json" >/dev/null || true
    echo "three $n $work/three-$n.json $work/three-$n-a.json $work/three-$n-b.json $work/three-$n-c.json" >>"$results"
    stop_all; sleep 1
    unset http pid
  fi
done

python3 - "$results" <<'PY'
import json, sys
def one(path):
    r = json.load(open(path)); w = r["totals"]["webrtc"]
    hold = r["series"][-int(r["config"]["duration"]):] or r["series"]
    cpu = sum(s["server_cpu_pct"] or 0 for s in hold) / max(len(hold), 1)
    return w["joined"], w["failed"], r["webrtc"]["kept_media"], w["lost"], w["expected"], cpu
print(f"{'setup':<7}{'asked':>6}{'joined':>7}{'refused':>8}{'held':>6}{'loss%':>8}  relay CPU, % of a core")
for line in open(sys.argv[1]):
    f = line.split()
    kind, n = f[0], f[1]
    parts = [one(p) for p in (f[2:3] if kind == "one" else f[3:])]
    j, fl, held = (sum(p[k] for p in parts) for k in range(3))
    loss = 100 * sum(p[3] for p in parts) / max(sum(p[4] for p in parts), 1)
    cpus = " / ".join(f"{p[5]:.0f}" for p in parts)
    print(f"{kind:<7}{n:>6}{j:>7}{fl:>8}{held:>6}{loss:>8.3f}  {cpus}{' (A / B / C)' if kind == 'three' else ''}")
print("held: joined and still receiving media at the end of the run; loss: of the packets sent to them")
PY
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
