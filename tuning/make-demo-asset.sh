#!/usr/bin/env bash
# Regenerates assets/demo.flv, the built-in looping program published by `deltacast serve --demo`
# (embedded with include_bytes! in src/ingest/demo.rs).
#
# The clip is exactly 8.000 s so that it loops without a seam:
#   video: 640x360, 30 fps, 240 frames, H.264 Main, one keyframe per second (-g 30), no B-frames
#   audio: AAC-LC 48 kHz stereo, 440/660 Hz sines (3520/5280 whole cycles in 8 s, so the phase is
#          continuous across the loop), 375 frames of 1024 samples
# The native AAC encoder adds one 1024-sample priming frame, so the muxer shifts everything by
# 21 ms; the demo reader (src/ingest/demo.rs) rebases on the first video tag and drops tags outside
# [0, 8000) ms (that priming frame), so audio and video both end exactly on the loop.
#
# Usage: tuning/make-demo-asset.sh [OUTPUT]   (default: assets/demo.flv next to this script)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../assets/demo.flv}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

command -v ffmpeg >/dev/null || { echo "ffmpeg is required (apt-get install ffmpeg)" >&2; exit 1; }

encode() { # $1: video filter chain
  ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i "testsrc2=size=640x360:rate=30:duration=8" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=8" \
    -f lavfi -i "sine=frequency=660:sample_rate=48000:duration=8" \
    -filter_complex "[0:v]$1format=yuv420p[v];[1:a][2:a]join=inputs=2:channel_layout=stereo,volume=0.3[a]" \
    -map "[v]" -map "[a]" \
    -c:v libx264 -profile:v main -preset medium -tune zerolatency \
    -b:v 300k -maxrate 360k -bufsize 600k -g 30 -keyint_min 30 -sc_threshold 0 -bf 0 \
    -c:a aac -b:a 64k -ar 48000 -ac 2 \
    -f flv -flvflags no_duration_filesize "$tmp/raw.flv"
}
# A frame counter on top of testsrc2's moving pattern; without fonts, testsrc2 alone.
encode "drawtext=text='deltacast demo  %{eif\\:mod(n\\,240)\\:d}':fontsize=28:fontcolor=white:box=1:boxcolor=black@0.6:x=20:y=h-50," \
  || encode ""

cp "$tmp/raw.flv" "$out"
size=$(stat -c %s "$out")
echo "wrote $out ($size bytes)"
ffprobe -hide_banner -loglevel error -count_packets -show_entries stream=codec_name,width,height,sample_rate,channels,nb_read_packets -of compact "$out"
if [ "$size" -ge 409600 ]; then
  echo "warning: $out is $size bytes (target < 400 KB)" >&2
fi
