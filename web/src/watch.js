// deltacast watch page: WebRTC (WHEP) first, LL-HLS when WebRTC cannot deliver, with no click,
// toggle or quality selector. Every URL comes from the playback API; this file names no provider,
// host or CDN.
//
// Paths and switches:
//   start ──► WebRTC (when the playback document offers WHEP and this tab has not seen it fail)
//               ├─ no frame decoded within webrtc_timeout_ms (2.5 s) ──┐
//               ├─ ICE/DTLS failed, connection closed               ──┤  remembered in
//               ├─ no new frame for freeze_ms (2 s) while live       ──┤  sessionStorage
//               └─ WHEP POST refused (except 409: not live)          ──┴─► LL-HLS (hls.js, low-latency
//                                                                         mode; native HLS without MSE)
//   the playback document is polled: offline → players stop, "offline" shown; back → start again;
//   a changed HLS URL (provider switched) → HLS restarts on the new URL.
//
// Tests read window.__deltacast (path, state, counters, events).

const FAIL_KEY = 'deltacast.webrtc-failed';
const POLL_LIVE_MS = 2000;
const POLL_IDLE_MS = 1000;
const HLS_STALL_MS = 8000;

const params = new URLSearchParams(location.search);
const debug = params.get('debug') === '1';
// The page lives at {root}watch/{stream}; assets and API are siblings of watch/.
const root = new URL('../', location.href);
const stream = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');

const $ = (id) => document.getElementById(id);
const player = $('player');
const video = $('video');
const statusText = $('status-text');
const notice = $('notice');
const noticeTitle = $('notice-title');
const noticeText = $('notice-text');
const unmute = $('unmute');
const debugBox = $('debug');

const dc = {
  stream,
  path: null, // 'webrtc' | 'hls' | null
  state: 'starting', // 'starting' | 'live' | 'offline' | 'error'
  error: null,
  webrtcFailed: safeSession('get'),
  fallbackReason: null,
  whepUrl: null,
  whepLocation: null,
  hlsUrl: null,
  firstFrameMs: null, // WebRTC: from starting the attempt to the first decoded frame
  framesDecoded: 0,
  audioPacketsReceived: 0,
  latency: null, // seconds (estimate, see debugLine)
  bitrate: null, // bits per second received
  hlsJs: null, // hls.js version when in use
  switches: 0,
  events: [],
  playback: null,
  get currentTime() {
    return video.currentTime;
  },
  get muted() {
    return video.muted;
  },
};
window.__deltacast = dc;

function safeSession(op, value) {
  try {
    if (op === 'get') return sessionStorage.getItem(FAIL_KEY);
    if (op === 'set') sessionStorage.setItem(FAIL_KEY, value);
  } catch {
    // Storage disabled: remember in memory only.
  }
  return null;
}

function log(ev, detail) {
  const e = { t: Math.round(performance.now()), ev };
  if (detail !== undefined) e.detail = detail;
  dc.events.push(e);
  if (dc.events.length > 300) dc.events.shift();
  console.info('[deltacast]', ev, detail ?? '');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ───────────────────────────── UI ─────────────────────────────

function setState(state, message) {
  if (dc.state !== state) log('state', state);
  dc.state = state;
  player.dataset.state = state;
  const labels = {
    starting: 'Starting…',
    live: 'Live',
    offline: 'Offline',
    error: 'Unavailable',
  };
  statusText.textContent = labels[state] || state;
  if (state === 'offline') {
    noticeTitle.textContent = dc.playback && dc.playback.state === 'unknown'
      ? 'No such stream'
      : 'This stream is offline';
    noticeText.textContent = 'It will start playing here by itself when it is back.';
    notice.hidden = false;
  } else if (state === 'error') {
    dc.error = message || 'playback failed';
    noticeTitle.textContent = 'Playback is not possible';
    noticeText.textContent = dc.error;
    notice.hidden = false;
  } else {
    notice.hidden = true;
  }
  updateUnmute();
  if (debug) debugBox.textContent = debugLine();
}

function setPath(path) {
  if (dc.path !== path) {
    if (dc.path && path) dc.switches += 1;
    log('path', path);
  }
  dc.path = path;
  player.dataset.path = path || '';
}

function updateUnmute() {
  const playing = dc.state === 'live' || dc.state === 'starting';
  unmute.hidden = !(playing && (video.muted || video.paused));
  unmute.querySelector('span').textContent = video.paused && !video.muted ? 'Tap to play' : 'Tap to unmute';
}

unmute.addEventListener('click', () => {
  video.muted = false;
  video.play().catch((e) => log('play-rejected', String(e)));
  updateUnmute();
});
video.addEventListener('volumechange', updateUnmute);
video.addEventListener('pause', updateUnmute);
video.addEventListener('playing', updateUnmute);

function playMuted() {
  // Autoplay rules: muted playback may start without a gesture; sound needs the unmute button.
  const p = video.play();
  if (p) p.catch((e) => log('autoplay-rejected', String(e)));
  updateUnmute();
}

// ───────────────────────────── playback document ─────────────────────────────

async function fetchPlayback() {
  const url = new URL(`api/v1/streams/${encodeURIComponent(stream)}/playback`, root);
  const r = await fetch(url, { cache: 'no-store' });
  if (r.status === 404) return { state: 'unknown', webrtc: null, hls: null };
  if (!r.ok) throw new Error(`playback API: HTTP ${r.status}`);
  return r.json();
}

// Every async step belongs to one attempt; a newer attempt (or a stop) bumps `gen`, and stale
// work notices and quits.
let gen = 0;
let current = null;

function stopCurrent(why) {
  gen += 1;
  const c = current;
  current = null;
  if (c) {
    log('stop', { path: c.kind, why });
    try {
      c.stop();
    } catch (e) {
      log('stop-error', String(e));
    }
  }
  dc.latency = null;
  dc.bitrate = null;
}

function start(pb) {
  stopCurrent('start');
  const g = gen;
  if (pb.webrtc && pb.webrtc.whep && !dc.webrtcFailed) {
    startWebRtc(pb.webrtc.whep, g, pb);
  } else if (pb.hls) {
    startHls(pb.hls, g);
  } else {
    setPath(null);
    setState('error', 'the server offers no playback URL for this stream');
  }
}

function onPlayback(pb) {
  dc.playback = pb;
  if (pb.state !== 'live' && pb.state !== 'starting') {
    if (current) stopCurrent(`stream ${pb.state}`);
    setPath(null);
    setState('offline');
    return;
  }
  if (!current) {
    if (dc.state === 'error') return;
    setState('starting');
    start(pb);
    return;
  }
  if (current.kind === 'hls' && pb.hls && pb.hls !== current.url) {
    log('hls-url-changed', { from: current.url, to: pb.hls });
    stopCurrent('HLS URL changed');
    startHls(pb.hls, gen);
  } else if (current.kind === 'webrtc' && (!pb.webrtc || pb.webrtc.whep !== current.url)) {
    log('whep-url-changed');
    start(pb);
  }
}

async function pollLoop() {
  for (;;) {
    try {
      onPlayback(await fetchPlayback());
    } catch (e) {
      log('poll-error', String(e));
    }
    await sleep(dc.state === 'live' ? POLL_LIVE_MS : POLL_IDLE_MS);
  }
}

// ───────────────────────────── WebRTC (WHEP) ─────────────────────────────

function parseIceLinks(link) {
  // Link: <stun:stun.example.net>; rel="ice-server", <turn:…>; rel="ice-server"; username="u"; credential="p"
  const servers = [];
  if (!link) return servers;
  for (const part of link.split(/,(?=\s*<)/)) {
    const m = part.match(/<([^>]+)>/);
    if (!m || !/rel="?ice-server"?/i.test(part)) continue;
    const s = { urls: m[1] };
    const u = part.match(/username="([^"]*)"/i);
    const c = part.match(/credential="([^"]*)"/i);
    if (u) s.username = u[1];
    if (c) s.credential = c[1];
    servers.push(s);
  }
  return servers;
}

async function startWebRtc(url, g, pb) {
  const t0 = performance.now();
  const timeoutMs = pb.webrtc_timeout_ms || 2500;
  const freezeMs = pb.freeze_ms || 2000;
  setPath('webrtc');
  dc.whepUrl = url;
  dc.framesDecoded = 0;
  dc.firstFrameMs = null;
  log('webrtc-start', url);

  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  const media = new MediaStream();
  let timer = null;
  const s = {
    kind: 'webrtc',
    url,
    pc,
    location: null,
    stop() {
      clearInterval(timer);
      pc.close();
      if (video.srcObject === media) video.srcObject = null;
      if (s.location) {
        // keepalive: the DELETE also goes out when the page is being closed.
        fetch(s.location, { method: 'DELETE', keepalive: true }).catch(() => {});
        s.location = null;
      }
    },
  };
  current = s;

  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.ontrack = (e) => {
    media.addTrack(e.track);
    if (video.srcObject !== media) video.srcObject = media;
    playMuted();
  };
  pc.onconnectionstatechange = () => {
    const st = pc.connectionState;
    log('webrtc-connection', st);
    if (g !== gen) return;
    if (st === 'failed' || st === 'closed') webrtcFailed(g, `connection ${st} (ICE/DTLS)`);
  };

  try {
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    // The server is ICE-lite: it learns our address from our checks, so the offer goes out at once
    // without waiting for candidate gathering.
    const r = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
    if (g !== gen) return;
    if (r.status !== 201) {
      const text = (await r.text().catch(() => '')).trim().slice(0, 200);
      const err = new Error(`WHEP POST answered HTTP ${r.status}${text ? `: ${text}` : ''}`);
      err.status = r.status;
      throw err;
    }
    const loc = r.headers.get('Location');
    if (loc) s.location = dc.whepLocation = new URL(loc, url).href;
    const ice = parseIceLinks(r.headers.get('Link'));
    if (ice.length) pc.setConfiguration({ ...pc.getConfiguration(), iceServers: ice });
    const answer = await r.text();
    if (g !== gen) return;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    log('webrtc-answer', { ms: Math.round(performance.now() - t0) });
  } catch (e) {
    if (g !== gen) return;
    // 409: the stream has no publisher right now; that says nothing about WebRTC here.
    webrtcFailed(g, `signaling: ${e.message || e}`, e.status !== 409);
    return;
  }

  let lastFrames = 0;
  let lastProgress = performance.now();
  let lastBytes = null;
  let lastBytesAt = 0;
  let checking = false;
  timer = setInterval(async () => {
    if (g !== gen || checking) return;
    checking = true;
    try {
      const stats = await pc.getStats();
      if (g !== gen) return;
      let frames = 0;
      let audioPackets = 0;
      let bytes = 0;
      let jitter = null;
      let rtt = null;
      stats.forEach((r) => {
        if (r.type === 'inbound-rtp') {
          bytes += r.bytesReceived || 0;
          if (r.kind === 'audio') audioPackets = r.packetsReceived || 0;
          if (r.kind === 'video') {
            frames = r.framesDecoded || 0;
            if (r.jitterBufferEmittedCount) jitter = r.jitterBufferDelay / r.jitterBufferEmittedCount;
          }
        } else if (r.type === 'candidate-pair' && r.nominated && r.currentRoundTripTime !== undefined) {
          rtt = r.currentRoundTripTime;
        }
      });
      const now = performance.now();
      if (lastBytes !== null && now > lastBytesAt) {
        dc.bitrate = Math.round(((bytes - lastBytes) * 8 * 1000) / (now - lastBytesAt));
      }
      lastBytes = bytes;
      lastBytesAt = now;
      if (jitter !== null) dc.latency = jitter + (rtt !== null ? rtt / 2 : 0);
      dc.rtt = rtt;
      dc.framesDecoded = frames;
      dc.audioPacketsReceived = audioPackets;
      if (frames > lastFrames) {
        if (lastFrames === 0) {
          dc.firstFrameMs = Math.round(now - t0);
          log('webrtc-first-frame', { ms: dc.firstFrameMs });
        }
        lastFrames = frames;
        lastProgress = now;
        setState('live');
      } else if (frames === 0 && now - t0 > timeoutMs) {
        webrtcFailed(g, `no frame decoded within ${timeoutMs} ms`);
      } else if (frames > 0 && now - lastProgress > freezeMs) {
        // Frozen: is it the publisher (offline) or the WebRTC path?
        const pbNow = await fetchPlayback().catch(() => null);
        if (g !== gen) return;
        if (pbNow && pbNow.state !== 'live' && pbNow.state !== 'starting') onPlayback(pbNow);
        else webrtcFailed(g, `no new frame for ${freezeMs} ms`);
      }
    } catch (e) {
      log('stats-error', String(e));
    } finally {
      checking = false;
    }
  }, 200);
}

function webrtcFailed(g, reason, remember = true) {
  if (g !== gen) return;
  log('webrtc-failed', { reason, remember });
  dc.fallbackReason = reason;
  if (remember) {
    dc.webrtcFailed = reason;
    safeSession('set', reason);
  }
  stopCurrent(reason);
  const pb = dc.playback;
  if (pb && pb.hls) {
    startHls(pb.hls, gen);
  } else {
    setState('error', `WebRTC failed (${reason}) and no HLS URL is offered`);
  }
}

// ───────────────────────────── LL-HLS ─────────────────────────────

let hlsJsPromise = null;

function loadHlsJs() {
  if (window.Hls) return Promise.resolve(window.Hls);
  if (!hlsJsPromise) {
    hlsJsPromise = new Promise((resolve, reject) => {
      const el = document.createElement('script');
      el.src = new URL('web/hls.min.js', root).href;
      el.async = true;
      el.onload = () => (window.Hls ? resolve(window.Hls) : reject(new Error('hls.js did not load')));
      el.onerror = () => {
        hlsJsPromise = null;
        el.remove();
        reject(new Error('hls.js could not be loaded from the server (is `npm ci --prefix web` done?)'));
      };
      document.head.appendChild(el);
    });
  }
  return hlsJsPromise;
}

async function startHls(url, g) {
  setPath('hls');
  dc.hlsUrl = url;
  log('hls-start', url);
  const loaded = []; // [time, bytes] of recent parts/segments, for the bitrate
  let lastTime = -1;
  let lastAdvance = performance.now();
  let watchdog = null;
  const s = {
    kind: 'hls',
    url,
    hls: null,
    stop() {
      clearInterval(watchdog);
      if (s.hls) s.hls.destroy();
      video.removeAttribute('src');
      video.load();
    },
  };
  current = s;

  const onProgress = () => {
    if (g !== gen) return;
    const t = video.currentTime;
    if (t !== lastTime) {
      if (lastTime >= 0 && t > lastTime) setState('live');
      lastTime = t;
      lastAdvance = performance.now();
    }
  };
  watchdog = setInterval(() => {
    if (g !== gen) return;
    onProgress();
    const now = performance.now();
    while (loaded.length && now - loaded[0][0] > 4000) loaded.shift();
    if (loaded.length > 1) {
      const bytes = loaded.reduce((a, [, b]) => a + b, 0);
      dc.bitrate = Math.round((bytes * 8 * 1000) / Math.max(1000, now - loaded[0][0]));
    }
    if (s.hls) {
      const pdt = s.hls.playingDate;
      dc.latency = typeof s.hls.latency === 'number' && s.hls.latency > 0 ? s.hls.latency : null;
      dc.latencyPdt = pdt ? (Date.now() - pdt.getTime()) / 1000 : null;
    }
    // Stalled while the stream is live: rebuild the player (new session after a publisher drop,
    // a CDN hiccup, …). The poll stops us first when the stream is offline.
    if (now - lastAdvance > HLS_STALL_MS && dc.playback && dc.playback.state === 'live') {
      log('hls-stalled', { seconds: Math.round((now - lastAdvance) / 1000) });
      stopCurrent('HLS stalled');
      startHls(url, gen);
    }
  }, 250);

  const mse = !!(window.MediaSource || window.ManagedMediaSource);
  if (mse) {
    let Hls;
    try {
      Hls = await loadHlsJs();
    } catch (e) {
      if (g !== gen) return;
      if (!video.canPlayType('application/vnd.apple.mpegurl')) {
        stopCurrent('no hls.js');
        setState('error', String(e.message || e));
        return;
      }
    }
    if (g !== gen) return;
    if (Hls && Hls.isSupported()) {
      dc.hlsJs = Hls.version;
      const hls = new Hls({
        lowLatencyMode: true,
        backBufferLength: 30,
        // Retry quickly: a live origin answers 503 while a stream is starting.
        manifestLoadPolicy: {
          default: {
            maxTimeToFirstByteMs: 10000,
            maxLoadTimeMs: 20000,
            timeoutRetry: { maxNumRetry: 4, retryDelayMs: 0, maxRetryDelayMs: 0 },
            errorRetry: { maxNumRetry: 6, retryDelayMs: 500, maxRetryDelayMs: 2000 },
          },
        },
      });
      s.hls = hls;
      hls.on(Hls.Events.FRAG_LOADED, (_e, data) => {
        const st = (data.part && data.part.stats) || (data.frag && data.frag.stats);
        if (st && st.loaded) loaded.push([performance.now(), st.loaded]);
      });
      hls.on(Hls.Events.ERROR, (_e, data) => {
        if (g !== gen || !data.fatal) return;
        log('hls-fatal', { type: data.type, details: data.details });
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
          hls.recoverMediaError();
        } else {
          // Network: retry from scratch shortly (the poll stops us if the stream went offline).
          setTimeout(() => {
            if (g !== gen) return;
            stopCurrent('HLS fatal error');
            if (dc.playback && dc.playback.hls) startHls(dc.playback.hls, gen);
          }, 1000);
        }
      });
      hls.attachMedia(video);
      hls.loadSource(url);
      playMuted();
      video.addEventListener('timeupdate', onProgress);
      return;
    }
  }
  if (video.canPlayType('application/vnd.apple.mpegurl')) {
    // Safari without MSE (older iOS): native HLS, which does LL-HLS itself.
    video.src = url;
    playMuted();
    video.addEventListener('timeupdate', onProgress);
    return;
  }
  stopCurrent('no HLS support');
  setState('error', 'this browser can play neither WebRTC nor HLS');
}

// ───────────────────────────── debug overlay ─────────────────────────────

function fmtBitrate(b) {
  if (b === null || b === undefined) return '–';
  return b >= 1e6 ? `${(b / 1e6).toFixed(2)} Mbit/s` : `${Math.round(b / 1e3)} kbit/s`;
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return '–';
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
}

function hostOf(url) {
  try {
    return new URL(url).host;
  } catch {
    return '–';
  }
}

function debugLine() {
  const lat = fmtSeconds(dc.latency);
  const lines = [
    `path      ${dc.path || '–'}`,
    `state     ${dc.state}`,
    dc.path === 'hls'
      ? `latency   ${lat} (hls.js)${dc.latencyPdt != null ? ` · ${fmtSeconds(dc.latencyPdt)} (PDT)` : ''}`
      : dc.path === 'webrtc'
        ? `latency   ${lat} (jitter buffer + RTT/2)`
        : `latency   ${lat}`,
    `bitrate   ${fmtBitrate(dc.bitrate)}`,
  ];
  if (dc.path) lines.push(`from      ${hostOf(dc.path === 'hls' ? dc.hlsUrl : dc.whepUrl)}`);
  if (dc.path === 'webrtc') {
    lines.push(`frames    ${dc.framesDecoded}${dc.firstFrameMs !== null ? ` (first after ${dc.firstFrameMs} ms)` : ''}`);
  } else if (dc.path === 'hls') {
    lines.push(`time      ${video.currentTime.toFixed(1)} s${dc.hlsJs ? ` · hls.js ${dc.hlsJs}` : ' · native'}`);
  }
  if (dc.fallbackReason) lines.push(`fallback  ${dc.fallbackReason}`);
  if (dc.webrtcFailed && dc.path !== 'webrtc') lines.push('webrtc    off for this session');
  return lines.join('\n');
}

if (debug) {
  debugBox.hidden = false;
  setInterval(() => {
    debugBox.textContent = debugLine();
  }, 500);
}

// ───────────────────────────── go ─────────────────────────────

window.addEventListener('pagehide', () => stopCurrent('page closed'));
if (!stream) {
  setState('error', 'no stream named in the URL');
} else {
  document.title = `${stream} · live`;
  setState('starting');
  pollLoop();
}
