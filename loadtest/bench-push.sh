#!/usr/bin/env bash
# RTMP push fan-out: relay CPU per destination at ~4 Mb/s for 0 (baseline), 1, 5 and 20
# destinations, deltacast side by side with nginx-rtmp's `push`, in the same run, on the same
# machine, with the same sinks.
#
#   publisher (ffmpeg -re -c copy, 4 Mb/s clip) ──► deltacast  ──N pushes──┐
#   publisher (ffmpeg -re -c copy, same clip)   ──► nginx-rtmp ──N pushes──┴─► sink nginx (live on)
#
# CPU is read from /proc/PID/task/*/schedstat (ns on CPU, every thread; for nginx, master + worker) over a
# fixed window after a warm-up. "per destination" = (CPU(N) - CPU(0)) / N.
#
# usage: loadtest/bench-push.sh [window-seconds] [destination counts...]   (default: 20 1 5 20)
set -euo pipefail
win=${1:-20}
shift || true
counts=${*:-"1 5 20"}
cd "$(dirname "$0")/.."
for tool in ffmpeg nginx curl; do
    command -v $tool >/dev/null || { echo "bench-push: $tool is required" >&2; exit 1; }
done
module=/usr/lib/nginx/modules/ngx_rtmp_module.so
[ -f $module ] || { echo "bench-push: $module missing (apt-get install libnginx-mod-rtmp)" >&2; exit 1; }
cargo build --release --bin deltacast >/dev/null

work=$(mktemp -d /tmp/bench-push.XXXXXX)
chmod 755 "$work"
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; [ -f "$work/sink/nginx.pid" ] && kill "$(cat "$work/sink/nginx.pid")" 2>/dev/null; rm -rf "$work"' EXIT

# CPU time in ns of the given pids, all their threads (schedstat: ns resolution; /proc/PID/stat's
# utime+stime count in 10 ms ticks, too coarse for a fraction of a percent).
cpu_ns() {
    local t=0
    for p in "$@"; do
        for f in /proc/"$p"/task/*/schedstat; do t=$((t + $(cut -d' ' -f1 "$f" 2>/dev/null || echo 0))); done
    done
    echo $t
}

# A 4 Mb/s, 30 fps, 2 s GOP clip with AAC, encoded once; publishers send it with -c copy.
clip=$work/clip.flv
ffmpeg -hide_banner -loglevel error -f lavfi -i "testsrc2=size=1280x720:rate=30,noise=alls=20:allf=t" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 20 \
    -c:v libx264 -preset veryfast -g 60 -bf 0 -b:v 4M -maxrate 4M -bufsize 4M -pix_fmt yuv420p \
    -c:a aac -b:a 128k -f flv "$clip"
echo "clip: $(ffprobe -v error -show_entries format=bit_rate -of csv=p=0 "$clip") b/s"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

nginx_start() { # dir conf
    mkdir -p "$1/logs"
    printf '%s' "$2" >"$1/nginx.conf"
    nginx -p "$1" -c "$1/nginx.conf" -g "daemon on; pid $1/nginx.pid; error_log $1/error.log;"
    for _ in $(seq 50); do [ -s "$1/nginx.pid" ] && break; sleep 0.1; done
}

sink_port=$(free_port)
mkdir -p "$work/sink"
nginx_start "$work/sink" "load_module $module;
worker_processes 1;
events { worker_connections 4096; }
rtmp { server { listen 127.0.0.1:$sink_port; application sink { live on; } } }"

printf '\n%-6s %-22s %-22s %-16s %-16s\n' dests "deltacast %core" "nginx-rtmp %core" "dc live/conns" "ngx conns"
declare -A dc_cpu ngx_cpu
for n in 0 $counts; do
    # deltacast relay
    http=$(free_port); rtmp=$(free_port)
    cfg=$work/dc-$n.toml
    printf '[server]\nhttp_listen = "127.0.0.1:%s"\n[rtmp]\nlisten = "127.0.0.1:%s"\n' "$http" "$rtmp" >"$cfg"
    for i in $(seq 1 $n); do
        printf '[[destinations]]\nstream = "bench"\nid = "d%s"\nurl = "rtmp://127.0.0.1:%s/sink/dc%s-%s"\n' \
            "$i" "$sink_port" "$n" "$i" >>"$cfg"
    done
    target/release/deltacast serve --config "$cfg" 2>"$work/dc-$n.log" &
    dc=$!; pids+=($dc)
    # nginx-rtmp relay with N push directives
    ng_port=$(free_port); ngdir=$work/ngx-$n; mkdir -p "$ngdir"
    pushes=""
    for i in $(seq 1 $n); do pushes+="push rtmp://127.0.0.1:$sink_port/sink/ngx$n-$i; "; done
    nginx_start "$ngdir" "load_module $module;
worker_processes 1;
events { worker_connections 4096; }
rtmp { server { listen 127.0.0.1:$ng_port; application live { live on; $pushes } } }"
    ngx_master=$(cat "$ngdir/nginx.pid")
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
    # publishers
    ffmpeg -hide_banner -loglevel error -nostdin -re -stream_loop -1 -i "$clip" -c copy -f flv \
        "rtmp://127.0.0.1:$rtmp/live/bench" &
    pids+=($!)
    ffmpeg -hide_banner -loglevel error -nostdin -re -stream_loop -1 -i "$clip" -c copy -f flv \
        "rtmp://127.0.0.1:$ng_port/live/bench" &
    pids+=($!)
    sleep 6
    ngx_worker=$(pgrep -P "$ngx_master" | head -1)
    live=$(curl -sf "http://127.0.0.1:$http/api/v1/streams/bench/destinations" | grep -o '"state":"live"' | wc -l || true)
    dc_conns=$(ss -Htnp state established "( dport = :$sink_port )" 2>/dev/null | grep -c "pid=$dc," || true)
    ngx_conns=$(ss -Htnp state established "( dport = :$sink_port )" 2>/dev/null | grep -c "pid=$ngx_worker," || true)
    a0=$(cpu_ns $dc); b0=$(cpu_ns "$ngx_master" "$ngx_worker")
    sleep "$win"
    a1=$(cpu_ns $dc); b1=$(cpu_ns "$ngx_master" "$ngx_worker")
    dc_cpu[$n]=$(awk -v d=$((a1 - a0)) -v w="$win" 'BEGIN{printf "%.3f", d / 1e9 / w * 100}')
    ngx_cpu[$n]=$(awk -v d=$((b1 - b0)) -v w="$win" 'BEGIN{printf "%.3f", d / 1e9 / w * 100}')
    bitrate=$(curl -sf "http://127.0.0.1:$http/api/v1/streams/bench" | grep -o '"bitrate_bps":[0-9]*' | cut -d: -f2 || true)
    printf '%-6s %-22s %-22s %-16s %-16s (ingest %s b/s)\n' "$n" "${dc_cpu[$n]}" "${ngx_cpu[$n]}" \
        "$live/$dc_conns" "$ngx_conns" "${bitrate:-?}"
    stop_all
    kill "$ngx_master" 2>/dev/null || true
    sleep 1
done

echo
echo "per extra destination (% of one core), (CPU(N) - CPU(0)) / N:"
for n in $counts; do
    awk -v n="$n" -v d1="${dc_cpu[$n]}" -v d0="${dc_cpu[0]}" -v g1="${ngx_cpu[$n]}" -v g0="${ngx_cpu[0]}" \
        'BEGIN{ dc=(d1-d0)/n; ng=(g1-g0)/n;
                printf "  N=%-3s deltacast %.3f   nginx-rtmp %.3f   ratio %.1fx\n", n, dc, ng, (dc > 0 ? ng/dc : 0) }'
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
