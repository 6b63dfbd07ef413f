#!/usr/bin/env bash
# The issue-12 mix on one machine: WebRTC viewers straight at the relay, LL-HLS viewers through the
# nginx cache of docs/CDN.md (the block is read from that file), one deltacast-load run, JSON and
# plots in the output directory.
#
#   1 Mb/s H.264 + 48 kb/s AAC clip, looped by the relay itself ([demo] file: no encoder at run time)
#   deltacast (unpinned, as README runs it)
#   deltacast-load: WEBRTC viewers ──WHEP──► deltacast;  HLS viewers ──► nginx (proxy_cache_lock) ──► deltacast
#
# usage: loadtest/bench-10k.sh OUTDIR      env: RELAY_LOG=warn (the relay's DELTACAST_LOG) WEBRTC=1000 HLS=9000 DURATION=600 RAMP=100 HLS_RAMP=300
#        PART_MS=1000 (LL-HLS part target; see docs/LOADTEST.md for why not 200 through nginx)
#        HLS_THREADS=2 WEBRTC_THREADS=1 RELAY_BIN / LOAD_BIN (prebuilt binaries)
#        CLIP=FILE.flv (a prebuilt clip: then ffmpeg is not needed)  NGINX_BIN=nginx (its binary)
set -euo pipefail
out=${1:?usage: bench-10k.sh OUTDIR}
webrtc=${WEBRTC:-1000}; hls=${HLS:-9000}; duration=${DURATION:-600}
ramp=${RAMP:-100}; hls_ramp=${HLS_RAMP:-300}; part_ms=${PART_MS:-1000}
cd "$(dirname "$0")/.."
nginx_bin=${NGINX_BIN:-nginx}
tools=("$nginx_bin" python3); [ -n "${CLIP:-}" ] || tools+=(ffmpeg)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || { echo "bench-10k: $tool is required" >&2; exit 1; }
done
# GET URL: exit 0 on a 2xx answer, the body on stdout (python3 rather than curl: fewer needs on a
# bare load machine).
get() { python3 -c 'import sys,urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())' "$1" 2>/dev/null; }
relay_bin=${RELAY_BIN:-target/release/deltacast}
load_bin=${LOAD_BIN:-target/release/deltacast-load}
if [ -z "${RELAY_BIN:-}${LOAD_BIN:-}" ]; then
    cargo build --release -p deltacast -p deltacast-load --bin deltacast --bin deltacast-load >/dev/null
fi
mkdir -p "$out"
out=$(realpath "$out")
# Two connections per LL-HLS viewer and a socket per WebRTC viewer, in the load tool and in nginx.
ulimit -n "$(ulimit -Hn)"
need=$((2 * hls + webrtc + 200))
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge "$need" ] ||
    echo "bench-10k: warning: open-files limit $(ulimit -n) < $need needed" >&2

work=$(mktemp -d /tmp/bench-10k.XXXXXX)
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

clip=${CLIP:-$work/clip.flv}
[ -n "${CLIP:-}" ] || loadtest/make-clip.sh "$clip"
clip=$(realpath "$clip")

http=$(free_port); rtmp=$(free_port); cdn=$(free_port)
cat >"$work/relay.toml" <<TOML
[server]
http_listen = "127.0.0.1:$http"
[rtmp]
listen = "127.0.0.1:$rtmp"
[sfu]
max_viewers = $((webrtc + 500))
[hls]
part_target_ms = $part_ms
[demo]
enabled = true
name = "bench"
file = "$clip"
[[streams]]
name = "bench"
keys = ["benchkey"]
TOML
DELTACAST_LOG=${RELAY_LOG:-warn} "$relay_bin" serve --config "$work/relay.toml" 2>"$out/relay.log" &
relay=$!; pids+=($relay)
for _ in $(seq 100); do get "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done

# nginx: the docs/CDN.md block, pointed at this relay, cache in the work directory.
mkdir -p "$work/nginx/cache" "$work/nginx/logs"
# nginx workers run unprivileged (www-data when started as root): they must reach the cache.
chmod a+rx "$work" "$work/nginx"; chmod a+rwx "$work/nginx/cache"
block=$(awk '/nginx-cdn-config/ {f=1; next} f && /^```nginx/ {p=1; next} p && /^```/ {exit} p' docs/CDN.md)
block=${block//\/var\/cache\/nginx\/deltacast/$work\/nginx\/cache}
block=${block//127.0.0.1:8080/127.0.0.1:$http}
block=${block//listen 80;/listen 127.0.0.1:$cdn;}
# Where nginx runs as root without Debian's www-data user (a bare load machine).
user_line=""
[ "$(id -u)" != 0 ] || id -u www-data >/dev/null 2>&1 || user_line="user nobody nogroup;"
cat >"$work/nginx/nginx.conf" <<NGINX
$user_line
worker_processes auto;
worker_rlimit_nofile $(ulimit -n);
error_log $work/nginx/logs/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections $(( $(ulimit -n) - 100 )); }
http {
    access_log off;
    # Temp files in the work directory, not the build's compiled-in /var/lib/nginx.
    client_body_temp_path $work/nginx/tmp-body;
    proxy_temp_path $work/nginx/tmp-proxy;
    fastcgi_temp_path $work/nginx/tmp-fastcgi;
    uwsgi_temp_path $work/nginx/tmp-uwsgi;
    scgi_temp_path $work/nginx/tmp-scgi;
    $block
}
NGINX
"$nginx_bin" -t -q -p "$work/nginx" -c "$work/nginx/nginx.conf"
"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
nginx_master=$!; pids+=($nginx_master)

for _ in $(seq 100); do
    get "http://127.0.0.1:$http/api/v1/streams/bench" | grep -q '"state":"publishing"' && break
    sleep 0.1
done
for _ in $(seq 100); do get "http://127.0.0.1:$cdn/hls/bench/index.m3u8" >/dev/null && break; sleep 0.1; done
sleep 4
echo "relay pid $relay (unpinned), http $http, nginx cache $cdn; $webrtc WebRTC + $hls LL-HLS, ${duration}s hold, parts ${part_ms} ms"
# nginx's CPU over the run (master + workers), from /proc: the load tool samples only the relay.
nginx_ticks() {
    local t=0 p
    for p in $nginx_master $(pgrep -P $nginx_master); do
        t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0)))
    done
    echo $t
}
ng0=$(nginx_ticks); t0=$(date +%s.%N)
rc=0
"$load_bin" run --url "http://127.0.0.1:$http" --hls-url "http://127.0.0.1:$cdn" --stream bench \
    --webrtc "$webrtc" --hls "$hls" --ramp "$ramp" --hls-ramp "$hls_ramp" --duration "$duration" \
    --max-seconds $((duration + 600)) --hls-threads "${HLS_THREADS:-2}" --webrtc-threads "${WEBRTC_THREADS:-1}" \
    --server-pid "$relay" --label "webrtc=$webrtc hls=$hls part=${part_ms}ms" --json "$out/result.json" \
    | tee "$out/progress.txt" || rc=$?
ng1=$(nginx_ticks); t1=$(date +%s.%N)
get "http://127.0.0.1:$http/metrics" >"$out/relay-metrics.txt" || true
python3 -c "import sys; print(f'nginx: {($ng1-$ng0)/$(getconf CLK_TCK)/($t1-$t0)*100:.0f} % of a core over the run (all workers)')" | tee -a "$out/progress.txt"
"$load_bin" plot "$out/result.json" --out "$out" >/dev/null || true
cp "$work/nginx/logs/error.log" "$out/nginx-error.log" 2>/dev/null || true
echo "nginx: $(grep -c . "$out/nginx-error.log" 2>/dev/null || true) error-log lines"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
exit $rc
