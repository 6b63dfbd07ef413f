#!/usr/bin/env bash
# HLS origin load: wrk against a cached part (keep-alive), then deltacast-load's LL-HLS viewers.
# Starts its own relay with the built-in demo on loopback, and stops it at the end.
# usage: loadtest/bench-hls.sh [wrk-seconds] [held-clients]
set -euo pipefail
secs=${1:-10}
held=${2:-1000}
cd "$(dirname "$0")/.."
# RELAY_BIN / LOAD_BIN: prebuilt binaries (then nothing is built).
relay_bin=${RELAY_BIN:-target/release/deltacast}
load_bin=${LOAD_BIN:-target/release/deltacast-load}
if [ -z "${RELAY_BIN:-}${LOAD_BIN:-}" ]; then
  cargo build --release -p deltacast -p deltacast-load --bin deltacast --bin deltacast-load >/dev/null
fi
http=127.0.0.1:18080
ulimit -n 65536 || true
# Pin the relay to core 0 and the load generators to core 1, so they do not share a core.
# Every load client comes from 127.0.0.1: lift the per-address cap (1,000 by default) above
# the held clients plus wrk's connections.
cfg=$(mktemp --suffix=.toml)
printf '[server]\nmax_connections_per_ip = %d\nmax_connections = %d\n' \
  $((held + 1000)) $((held + 1000)) >"$cfg"
taskset -c 0 "$relay_bin" serve --config "$cfg" --demo --http $http \
  --rtmp 127.0.0.1:11935 2>/tmp/deltacast-bench.log &
relay=$!
trap 'kill $relay 2>/dev/null || true; rm -f "$cfg"' EXIT
for _ in $(seq 50); do curl -sf "http://$http/hls/demo/index.m3u8" >/dev/null && break; sleep 0.2; done
sleep 3
part=$(curl -sf "http://$http/hls/demo/index.m3u8" | grep -o 'URI="[^"]*part[^"]*"' | grep -v PRELOAD | head -1 | cut -d'"' -f2)
echo "part under test: $part ($(curl -sf "http://$http/hls/demo/$part" | wc -c) bytes)"
echo "== wrk: cached part, 1 thread, 64 keep-alive connections, ${secs}s (relay pinned to 1 core)"
taskset -c 1 wrk -t1 -c64 -d"${secs}s" --latency "http://$http/hls/demo/$part"
# The same bytes from nginx, a static file on the same core, in the same run: the peer the
# issue compares the origin with (MediaMTX is not packaged for Debian; nginx is).
if command -v nginx >/dev/null; then
  ng=$(mktemp -d /tmp/bench-hls-nginx.XXXXXX)
  chmod a+rx "$ng"
  mkdir -p "$ng/www" "$ng/logs"
  curl -sf "http://$http/hls/demo/$part" -o "$ng/www/part.m4s"
  chmod a+r "$ng/www/part.m4s"
  cat >"$ng/nginx.conf" <<NGINX
worker_processes 1;
error_log $ng/logs/error.log warn;
pid $ng/nginx.pid;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  server { listen 127.0.0.1:18081; root $ng/www;
    location / { add_header Cache-Control "public, max-age=31536000, immutable"; } } }
NGINX
  taskset -c 0 nginx -p "$ng" -c "$ng/nginx.conf" -g 'daemon off;' &
  ngpid=$!
  trap 'kill $relay $ngpid 2>/dev/null || true; rm -rf "$cfg" "$ng"' EXIT
  for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18081/part.m4s && break; sleep 0.1; done
  echo "== wrk: the same part as a static file from nginx (1 worker on core 0), same wrk, ${secs}s"
  taskset -c 1 wrk -t1 -c64 -d"${secs}s" --latency "http://127.0.0.1:18081/part.m4s"
  kill $ngpid 2>/dev/null || true
else
  echo "== nginx not installed: no static-file comparison"
fi
echo "== wrk: playlist (non-blocking), 1 thread, 64 connections, ${secs}s"
taskset -c 1 wrk -t1 -c64 -d"${secs}s" --latency "http://$http/hls/demo/index.m3u8"
echo "== LL-HLS viewers as hls.js (blocking reloads + preload-hinted parts): $held viewers, 20 s held"
taskset -c 1 "$load_bin" run --url "http://$http" --stream demo --hls "$held" \
  --ramp 200 --duration 20 --server-pid "$relay" --quiet || true
echo "== relay RSS: $(grep VmRSS /proc/$relay/status)"
echo "== server-side: part landed → held request answered (histogram, seconds)"
curl -sf "http://$http/metrics" | grep '^deltacast_hls_block_release_seconds'
