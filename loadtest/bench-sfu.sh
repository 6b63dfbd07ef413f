#!/usr/bin/env bash
# WebRTC SFU under WHEP viewer load, epoll vs io_uring (and UDP GSO on vs off) in one run,
# loopback only.
#
#   ffmpeg -re -c copy (1 Mb/s H.264 clip, 640x360 30 fps, 2 s GOP) ──RTMP──► deltacast (core 0)
#                                   [sfu] workers = 1, --sfu-io epoll|uring, --sfu-gso on|off
#   deltacast-whep-load (core 1): N str0m viewers, full ICE + DTLS + SRTP, one UDP socket each
#
# For every driver, GSO setting and viewer count a fresh relay is started (so RSS at 0 viewers is
# a clean baseline), the publisher runs for a GOP, the load generator joins N viewers at
# --join-rate, waits 2 s, measures for the window and prints one RESULT line; the table below collects them.
#
# usage: loadtest/bench-sfu.sh [window-seconds] [viewer counts...]   (default: 20 50 200 500)
# env:   DRIVERS="epoll uring"  JOIN_RATE=200  LOAD_THREADS=2
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
cd "$(dirname "$0")/.."
for tool in ffmpeg curl taskset; do
    command -v $tool >/dev/null || { echo "bench-sfu: $tool is required" >&2; exit 1; }
done
relay_bin=${RELAY_BIN:-target/release/deltacast}
load_bin=${LOAD_BIN:-target/release/deltacast-whep-load}
if [ -z "${RELAY_BIN:-}${LOAD_BIN:-}" ]; then
    cargo build --release -p deltacast -p deltacast-load --bin deltacast --bin deltacast-whep-load >/dev/null
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
ffmpeg -hide_banner -loglevel error -f lavfi -i "testsrc=size=640x360:rate=30,noise=alls=8:allf=t" -t 20 \
    -c:v libx264 -preset veryfast -tune zerolatency -g 60 -bf 0 -b:v 1M -maxrate 1M -bufsize 1M \
    -pix_fmt yuv420p -an -f flv "$clip"
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
            out=$(taskset -c $load_core "$load_bin" --http "127.0.0.1:$http" \
                --stream bench --viewers "$n" --secs "$win" --join-rate "$join_rate" \
                --threads "$threads" --pid "$relay" 2>&1) || true
            echo "$out" | grep -v '^RESULT'
            line=$(echo "$out" | grep '^RESULT' || echo "RESULT viewers=$n failed=1")
            echo "driver=$drv gso=$gso $line" >>"$results"
            grep -m3 GSO "$log" || true  # e.g. the kernel refusing UDP GSO
            stop_all
            sleep 1
        done
    done
done

echo
printf '%-6s %-7s %-7s %-8s %-8s %-13s %-9s %-9s %-9s %-10s %-9s %-8s %-10s %-8s %-6s %-12s\n' driver gso viewers playing "pkt/s" "loss%/reord%" "p50ms" "p99ms" "maxms" "ttff-p50" "relay%" "sfu%" "pkt/s/core" "KB/view" "gen%" "drops(v/r)"
while read -r line; do
    get() { echo "$line" | tr ' ' '\n' | grep "^$1=" | cut -d= -f2; }
    printf '%-6s %-7s %-7s %-8s %-8s %-13s %-9s %-9s %-9s %-10s %-9s %-8s %-10s %-8s %-6s %-12s\n' \
        "$(get driver)" "$(get gso)" "$(get viewers)" "$(get playing)" "$(get pps)" "$(get loss_pct)/$(get reordered_pct)" \
        "$(get lat_p50_ms)" "$(get lat_p99_ms)" "$(get lat_max_ms)" "$(get ttff_p50_ms)" \
        "$(get cpu_pct)" "$(get sfu_cpu_pct)" "$(get pps_per_core)" "$(get kb_per_viewer)" \
        "$(get loadgen_cpu_pct)" "$(get client_sock_drops)/$(get relay_sock_drops)"
done <"$results"
echo "columns: p50/p99/max = fan-out spread (kernel rx timestamp − first viewer's, same payload);"
echo "  loss = unique sequence numbers missing; reord = arrived behind a higher sequence number;"
echo "  ttff-p50 = POST → first complete frame; relay% = whole relay process, sfu% = the SFU worker"
echo "  thread, pkt/s/core = SRTP packets received / SFU worker CPU s; KB/view = (RSS(N) − RSS(0)) / N;"
echo "  gen% = load generator CPU; drops(v/r) = kernel drops at the viewers' / the relay's sockets"
echo "relay on core $relay_core, load generator + publisher on core $load_core"
echo "machine: $ncpu cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
