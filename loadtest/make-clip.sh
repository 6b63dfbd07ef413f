#!/usr/bin/env bash
# The benchmarks' one source clip: 20 s of a noisy 640x360 test picture, 30 fps, H.264 at 1 Mbit/s
# (keyframe every 2 s, no B-frames) and 48 kbit/s stereo AAC, as FLV. The relay loops it
# ([demo] file) or ffmpeg publishes it with -c copy, so no encoder runs during a measurement.
#
# usage: loadtest/make-clip.sh OUT.flv      env: AUDIO=0 (video only)  PROFILE=baseline (H.264 profile)
set -euo pipefail
out=${1:?usage: make-clip.sh OUT.flv}
audio=(-f lavfi -i "sine=frequency=440:sample_rate=48000")
audio_codec=(-c:a aac -b:a 48k -ar 48000 -ac 2)
if [ "${AUDIO:-1}" = 0 ]; then audio=(); audio_codec=(-an); fi
ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc=size=640x360:rate=30,noise=alls=8:allf=t" \
    "${audio[@]}" -t 20 \
    -c:v libx264 ${PROFILE:+-profile:v "$PROFILE"} -preset veryfast -tune zerolatency -g 60 -bf 0 \
    -b:v 1M -maxrate 1M -bufsize 1M -pix_fmt yuv420p "${audio_codec[@]}" -f flv "$out"
