// deltacast watch page: the first picture as soon as any path has one, WebRTC (WHEP) as the path
// that stays whenever it works, LL-HLS otherwise, with no click, toggle or quality selector. Every
// URL comes from the playback API; this file names no provider, host or CDN.
//
// Start (a race, both legs at once, each in its own <video>; #rtc is stacked above #video):
//   playback document ──┬─► WebRTC leg (#rtc): WHEP POST, ICE, DTLS, first frame
//                       │     (the RTT estimate: see estimateRtt)
//                       └─► LL-HLS leg (#video): hls.js (preloaded by the HTML), playlist,
//                             init segment, first part, first frame
//   - whichever presents a frame first is on screen (first-frame time);
//   - a WebRTC frame decides for WebRTC: #rtc covers #video at that frame (no gap: its frame is
//     already decoded), the sound moves to #rtc, hls.js is destroyed (no more HLS requests);
//   - WebRTC is cut early, deciding for LL-HLS, when no ICE candidate pair answers within
//     max(ICE_MIN_MS, ICE_RTT_FACTOR × RTT) of the answer (and ICE_MIN_CHECKS checks were sent
//     unanswered), or DTLS does not complete within
//     max(DTLS_MIN_MS, DTLS_RTT_FACTOR × RTT) of ICE; ICE/DTLS failure, a refused POST or no
//     frame within webrtc_timeout_ms cut it too. A cut is remembered in sessionStorage and the
//     next start skips WebRTC (not after a 409, which only says the stream has no publisher,
//     nor after the DTLS bound, as STUN got through).
// Mid-stream: no new WebRTC frame for freeze_ms, no RTP at all for DEAD_MS (only where the document
//   names other nodes), ICE disconnected for DISCONNECT_GRACE_MS, or the connection fails/closes →
//   failover first: a new WHEP session on the next node of the document's `webrtc.alternates`
//   (least-loaded first; the node that died is skipped), each attempt under the usual cuts, up to
//   MAX_FAILOVER nodes; then LL-HLS as the last resort, the last WebRTC picture staying until
//   LL-HLS has one. A single node offers no alternates: LL-HLS at once, as before.
// A WHEP POST may be redirected (307, a full node in a cluster): fetch follows it with the body,
//   and the session URL (Location) is resolved against the final URL, the node that answered.
// The playback document is polled: offline → players stop, "offline" shown; back → start again;
// a changed HLS URL (provider switched) → HLS restarts on the new URL. When the node that served
// the page does not answer (it may be the one that died), the document is asked of the other
// nodes it last named.
//
// Tests read window.__deltacast (path, state, first frame, decision, counters, events); every
// time there is in ms since navigation start (performance.now()).

const FAIL_KEY = 'deltacast.webrtc-failed';
const POLL_LIVE_MS = 2000;
const POLL_IDLE_MS = 1000;
const HLS_STALL_MS = 8000;
// Early cut of a WebRTC attempt. Chromium starts its connectivity checks as soon as the answer is
// applied and repeats them every ~50 ms, so a reachable ICE-lite server answers within about one
// RTT; DTLS needs two more round trips. The floors absorb a busy client (scheduling, a cold
// network thread) and a round trip that understates the path RTT.
const ICE_MIN_MS = 500;
const ICE_RTT_FACTOR = 4;
const ICE_MIN_CHECKS = 5;
const DTLS_MIN_MS = 1500; // DTLS is CPU work on both ends: a busy server or client needs longer
const DTLS_RTT_FACTOR = 4;
// A first frame presented (requestVideoFrameCallback) is the measure; 'loadeddata' stands in
// where that callback never comes (no support, or a browser that does not paint the element).
const FRAME_FALLBACK_MS = 250;
// Failover (cluster). Audio alone sends a packet every 20 ms: a second without any RTP means the
// path or the node is gone, sooner than a video freeze can say so. A dead node's playback
// document is not waited for long (a machine that is down answers nothing).
const DEAD_MS = 1000;
const DISCONNECT_GRACE_MS = 1000;
const DOC_CHECK_MS = 500;
const POLL_TIMEOUT_MS = 1500;
const MAX_FAILOVER = 3;
const FAILOVER_ATTACH_MS = 1500;

const params = new URLSearchParams(location.search);
const debug = params.get('debug') === '1';
// The page lives at {root}watch/{stream}; assets and API are siblings of watch/.
const root = new URL('../', location.href);
const stream = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');

const $ = (id) => document.getElementById(id);
const player = $('player');
const video = $('video'); // LL-HLS
const rtc = $('rtc'); // WebRTC, stacked above #video
const statusText = $('status-text');
const notice = $('notice');
const noticeTitle = $('notice-title');
const noticeText = $('notice-text');
const unmute = $('unmute');
const debugBox = $('debug');

const sinceNav = () => Math.round(performance.now());

const dc = {
  stream,
  path: null, // the path on screen: 'webrtc' | 'hls' | null
  state: 'starting', // 'starting' | 'live' | 'offline' | 'error'
  error: null,
  webrtcFailed: safeSession('get'),
  fallbackReason: null,
  whepUrl: null,
  whepFinalUrl: null, // where the WHEP POST ended up (after a 307), the node serving WebRTC
  whepLocation: null,
  reconnects: 0, // WebRTC sessions resumed on another node after the one playing died
  reconnectGapMs: null, // last frame of the dead session → first frame of the new one
  failover: null, // { since, from, tried } while a failover is under way
  hlsUrl: null,
  firstFrame: null, // { ms (since navigation), path, via: 'frame' | 'loadeddata' }
  firstFrameMs: null, // firstFrame.ms
  decision: null, // { path, ms (since navigation), reason }: the path that stays
  webrtcFirstFrameMs: null, // WebRTC: from starting the attempt to its first frame
  rttMs: null, // WHEP POST round trip
  iceBoundMs: null,
  framesDecoded: 0,
  audioPacketsReceived: 0,
  latency: null, // seconds (estimate, see debugLine)
  bitrate: null, // bits per second received
  hlsJs: null, // hls.js version when in use
  hlsBytes: 0, // playlists, init and media bytes loaded by hls.js since the page opened
  switches: 0,
  events: [],
  playback: null,
  get currentTime() {
    return front().currentTime;
  },
  get muted() {
    return front().muted;
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
  const e = { t: sinceNav(), ev };
  if (detail !== undefined) e.detail = detail;
  dc.events.push(e);
  if (dc.events.length > 300) dc.events.shift();
  console.info('[deltacast]', ev, detail ?? '');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ───────────────────────────── UI ─────────────────────────────

// The element on screen: #rtc while WebRTC is the path, else #video.
function front() {
  return dc.path === 'webrtc' ? rtc : video;
}

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
    // The sound follows the picture: only the element on screen may be audible, and it keeps the
    // viewer's choice (muted or not). Both happen in this task, so no two tracks overlap.
    const from = front();
    const to = path === 'webrtc' ? rtc : video;
    if (from !== to) {
      const muted = from.muted;
      from.muted = true;
      to.muted = muted;
      if (!muted) to.play().catch((e) => log('play-rejected', String(e)));
    }
  }
  dc.path = path;
  player.dataset.path = path || '';
  updateUnmute();
}

function updateUnmute() {
  const el = front();
  const playing = dc.state === 'live' || dc.state === 'starting';
  unmute.hidden = !(playing && (el.muted || el.paused));
  unmute.querySelector('span').textContent = el.paused && !el.muted ? 'Tap to play' : 'Tap to unmute';
}

unmute.addEventListener('click', () => {
  const el = front();
  el.muted = false;
  el.play().catch((e) => log('play-rejected', String(e)));
  updateUnmute();
});
for (const el of [video, rtc]) {
  el.addEventListener('volumechange', updateUnmute);
  el.addEventListener('pause', updateUnmute);
  el.addEventListener('playing', updateUnmute);
}

function playMuted(el) {
  // Autoplay rules: muted playback may start without a gesture; sound needs the unmute button.
  const p = el.play();
  // AbortError: a stop or a new source interrupted this play(); nothing was refused.
  if (p) p.catch((e) => e.name !== 'AbortError' && log('autoplay-rejected', String(e)));
  updateUnmute();
}

// Calls `cb(via)` once, when `el` presents its first video frame for `leg`.
function watchFirstFrame(el, leg, cb) {
  let done = false;
  const rvfc = typeof el.requestVideoFrameCallback === 'function';
  const fire = (via) => {
    if (done) return;
    done = true;
    el.removeEventListener('loadeddata', onData);
    el.removeEventListener('resize', onData);
    if (alive(leg)) cb(via);
  };
  function onData() {
    if (el.readyState < 2 || !el.videoWidth) return; // nothing to show yet, or audio only
    if (rvfc) setTimeout(() => fire('loadeddata'), FRAME_FALLBACK_MS);
    else fire('loadeddata');
  }
  if (rvfc) el.requestVideoFrameCallback(() => fire('frame'));
  el.addEventListener('loadeddata', onData);
  el.addEventListener('resize', onData);
}

function firstFrame(path, via) {
  if (dc.firstFrame) return;
  dc.firstFrame = { ms: sinceNav(), path, via };
  dc.firstFrameMs = dc.firstFrame.ms;
  log('first-frame', dc.firstFrame);
}

// The path that stays (WebRTC had a frame, or LL-HLS because WebRTC was cut or not tried).
function decide(path, reason) {
  dc.decision = { path, ms: sinceNav(), reason };
  log('decision', dc.decision);
}

// ───────────────────────────── playback document ─────────────────────────────

let playbackFetches = 0;

const playbackPath = () => `api/v1/streams/${encodeURIComponent(stream)}/playback`;

// The node's base URL of a WHEP URL ({base}/whep/{stream}), null for anything else.
function nodeBase(whep) {
  try {
    const u = new URL(whep);
    const i = u.pathname.lastIndexOf('/whep/');
    return i < 0 ? null : `${u.origin}${u.pathname.slice(0, i)}/`;
  } catch {
    return null;
  }
}

async function fetchPlaybackFrom(base, opts, timeoutMs) {
  // No signal on the first request: it must match the preload exactly to take its response.
  const signal = timeoutMs && AbortSignal.timeout ? AbortSignal.timeout(timeoutMs) : undefined;
  const r = await fetch(new URL(playbackPath(), base), signal ? { ...opts, signal } : opts);
  if (r.status === 404) return { state: 'unknown', webrtc: null, hls: null };
  if (!r.ok) throw new Error(`playback API: HTTP ${r.status}`);
  return r.json();
}

// The playback document from the page's own node; when that node does not answer at all, from
// the node serving WebRTC now or another node the last document named (a cluster).
async function fetchPlayback(timeoutMs = POLL_TIMEOUT_MS) {
  // The first one takes the response the page's Link header preloaded (a 'no-store' request
  // would not); the server marks the document no-store, so no cache keeps it either way.
  const first = playbackFetches++ === 0;
  try {
    return await fetchPlaybackFrom(root, first ? {} : { cache: 'no-store' }, first ? 0 : timeoutMs);
  } catch (e) {
    if (e instanceof Error && e.message.startsWith('playback API: HTTP')) throw e; // it answered
    const pb = dc.playback;
    const others = [dc.whepFinalUrl, pb && pb.webrtc && pb.webrtc.whep,
      ...((pb && pb.webrtc && pb.webrtc.alternates) || [])]
      .map((u) => u && nodeBase(u))
      .filter((b, i, all) => b && b !== root.href && all.indexOf(b) === i);
    for (const base of others) {
      try {
        return await fetchPlaybackFrom(base, { cache: 'no-store' }, timeoutMs);
      } catch {
        // next node
      }
    }
    throw e;
  }
}

// The running legs; a leg's async steps check `alive(leg)` and quit once it is stopped or replaced.
const legs = { webrtc: null, hls: null };

function alive(leg) {
  return legs[leg.kind] === leg;
}

function stopLeg(leg, why) {
  if (!leg || !alive(leg)) return;
  legs[leg.kind] = null;
  log('stop', { path: leg.kind, why });
  try {
    leg.stop();
  } catch (e) {
    log('stop-error', String(e));
  }
}

function stopAll(why) {
  stopLeg(legs.webrtc, why);
  stopLeg(legs.hls, why);
  if (rtc.srcObject) rtc.srcObject = null;
  dc.latency = null;
  dc.bitrate = null;
}

function start(pb) {
  stopAll('start');
  dc.decision = null;
  const whep = pb.webrtc && pb.webrtc.whep;
  const tryWebrtc = !!whep && !dc.webrtcFailed;
  if (!tryWebrtc && !pb.hls) {
    setPath(null);
    setState('error', 'the server offers no playback URL for this stream');
    return;
  }
  // Both legs at once: LL-HLS gets ready (or shows) while WebRTC connects.
  if (tryWebrtc) startWebRtc(whep, pb);
  if (pb.hls) startHls(pb.hls);
  if (!tryWebrtc) {
    const w = takeWarm('webrtc');
    if (w) w.pc.close();
    decide('hls', whep ? `WebRTC failed earlier in this session (${dc.webrtcFailed})` : 'no WHEP offered');
  }
}

function onPlayback(pb) {
  dc.playback = pb;
  if (pb.state !== 'live' && pb.state !== 'starting') {
    if (legs.webrtc || legs.hls) stopAll(`stream ${pb.state}`);
    setPath(null);
    setState('offline');
    return;
  }
  if (!legs.webrtc && !legs.hls) {
    if (dc.state === 'error') return;
    setState('starting');
    start(pb);
    return;
  }
  if (legs.hls && pb.hls && pb.hls !== legs.hls.url) {
    log('hls-url-changed', { from: legs.hls.url, to: pb.hls });
    stopLeg(legs.hls, 'HLS URL changed');
    startHls(pb.hls);
  } else if (legs.webrtc && !offersWhep(pb, legs.webrtc.url)) {
    log('whep-url-changed');
    start(pb);
  }
}

// The document still offers the WHEP URL a session runs on. In a cluster the `whep` URL is where
// a new viewer goes (it moves with the nodes' load) and the others are in `alternates`: a session
// moves only when its URL is offered no more (a provider switch, a node gone).
function offersWhep(pb, url) {
  const w = pb.webrtc;
  return !!w && (w.whep === url || (Array.isArray(w.alternates) && w.alternates.includes(url)));
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

// ───────────────────────────── warm start ─────────────────────────────

// What needs no URL starts while the playback document is on its way: the WebRTC offer (a
// PeerConnection with its two receivers) and hls.js with a MediaSource attached to #video. The
// first start takes them; until then they wait (no traffic: nothing is sent before the POST).
const warm = { webrtc: null, hls: null };

function takeWarm(kind) {
  const w = warm[kind];
  warm[kind] = null;
  return w;
}

function newPeerConnection() {
  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  // The server is ICE-lite: it learns our address from our checks, so the offer goes out at once
  // without waiting for candidate gathering.
  const ready = pc.createOffer().then((offer) => pc.setLocalDescription(offer));
  ready.catch(() => {}); // reported by the start that awaits it
  return { pc, ready };
}

function newHls(Hls) {
  return new Hls({
    lowLatencyMode: true,
    backBufferLength: 30,
    // Transmux on the main thread: fMP4 needs no remuxing worth a worker, and hls.js's inline
    // worker compiles the whole library a second time while the start is racing.
    enableWorker: false,
    // Start at the first part hls.js loads (the last independent part before the target
    // latency) instead of loading on to the target first: one part to a first frame, not up to a
    // GOP of parts in sequence. The extra latency (under one GOP) is caught up at ≤ 1.1× speed.
    startOnSegmentBoundary: true,
    // Load the start part as soon as the playlist is in, even before the MediaSource is open
    // (when the start beats the warm-up, attachMedia and loadSource go out together and
    // 'sourceopen' often comes after the playlist). Without it hls.js waits for its next tick,
    // and its live-edge check then parks it until the first blocking playlist reload answers:
    // up to a part target plus a round trip (120 to 380 ms in the firewall timelines).
    startFragPrefetch: true,
    maxLiveSyncPlaybackRate: 1.1,
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
}

function warmUp() {
  if (!dc.webrtcFailed && window.RTCPeerConnection) {
    try {
      warm.webrtc = newPeerConnection();
    } catch (e) {
      log('warm-error', String(e));
    }
  }
  if (mse) {
    loadHlsJs()
      .then((Hls) => {
        if (warm.hls || legs.hls || !Hls.isSupported()) return;
        warm.hls = newHls(Hls);
        warm.hls.attachMedia(video);
      })
      .catch(() => {}); // startHls reports it
  }
}

function dropWarm() {
  const w = takeWarm('webrtc');
  if (w) w.pc.close();
  const h = takeWarm('hls');
  if (h) h.destroy();
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

// Connectivity checks so far: sent, answered, and whether a pair succeeded.
async function iceChecks(pc) {
  const out = { sent: 0, answered: 0, succeeded: false };
  (await pc.getStats()).forEach((r) => {
    if (r.type !== 'candidate-pair') return;
    out.sent += r.requestsSent || 0;
    out.answered += r.responsesReceived || 0;
    if (r.state === 'succeeded') out.succeeded = true;
  });
  return out;
}

// Round trip of a request from its resource timing (request sent → first response byte), null
// where not exposed (cross-origin without Timing-Allow-Origin, no entry).
function timedRtt(url, since = 0) {
  const entries = performance.getEntriesByName(url, 'resource').filter((e) => e.startTime >= since);
  const e = entries[entries.length - 1];
  return e && e.responseStart > 0 && e.requestStart > 0 ? e.responseStart - e.requestStart : null;
}

// The RTT the early cut scales with: the smaller of the WHEP POST's and the playback document's
// round trips. Both are upper bounds (each includes the server's work; a WHEP POST creates a
// session, which a busy server may take long over); resource timing leaves out the time this
// page's busy main thread took to notice the answers. Where timing is not exposed, the POST
// round trip measured here stands in.
function estimateRtt(url, tPost, measured) {
  const post = timedRtt(url, tPost - 1);
  const doc = timedRtt(new URL(`api/v1/streams/${encodeURIComponent(stream)}/playback`, root).href);
  const rtts = [post ?? measured, doc].filter((v) => v !== null);
  return Math.max(1, Math.round(Math.min(...rtts)));
}

async function startWebRtc(url, pb, failover = null) {
  const t0 = performance.now();
  const since = () => Math.round(performance.now() - t0);
  const timeoutMs = pb.webrtc_timeout_ms || 2500;
  const freezeMs = pb.freeze_ms || 2000;
  dc.whepUrl = url;
  dc.whepFinalUrl = url;
  dc.framesDecoded = 0;
  dc.webrtcFirstFrameMs = null;
  dc.rttMs = null;
  dc.iceBoundMs = null;
  log('webrtc-start', failover ? { url, failover: failover.tried.length } : url);

  const prepared = takeWarm('webrtc') || newPeerConnection();
  const pc = prepared.pc;
  const media = new MediaStream();
  const timers = [];
  const leg = {
    kind: 'webrtc',
    url,
    t0,
    pc,
    location: null,
    server: null, // origin of the node that answered the POST (after redirects)
    failover, // { since, lastFrameAt, tried: [node origins] } when this session replaces a dead one
    lastFrameAt: null,
    framed: false, // a frame was presented: WebRTC is (or was) on screen
    iceAt: null,
    keepPicture: false,
    stop() {
      // clearTimeout and clearInterval share one timer list.
      timers.forEach((id) => clearTimeout(id));
      pc.close();
      // After a mid-stream failure the last picture stays until LL-HLS has one (hlsFrame).
      if (rtc.srcObject === media && !leg.keepPicture) rtc.srcObject = null;
      if (leg.location) {
        // keepalive: the DELETE also goes out when the page is being closed.
        fetch(leg.location, { method: 'DELETE', keepalive: true }).catch(() => {});
        leg.location = null;
      }
    },
  };
  legs.webrtc = leg;
  if (front() !== rtc) rtc.muted = true; // not on screen: silent

  // The new session goes on #rtc at once, except a failover's: the dead session's last picture
  // stays until the new one has decoded a frame (the stats say so), so the viewer sees a freeze,
  // not a black frame. A receiver decodes without a sink; FAILOVER_ATTACH_MS is the safety net.
  let attached = false;
  let trackAt = null;
  const attach = () => {
    if (attached || !alive(leg)) return;
    attached = true;
    if (failover) log('webrtc-attach', { ms: since(), decoding: dc.framesDecoded > 0 });
    rtc.srcObject = media;
    watchFirstFrame(rtc, leg, (via) => webrtcFrame(leg, via));
    playMuted(rtc);
  };
  leg.attachIfDecoding = (frames, now) => {
    if (!attached && trackAt !== null && (frames > 0 || now - trackAt > FAILOVER_ATTACH_MS)) attach();
  };
  pc.ontrack = (e) => {
    if (!alive(leg)) return;
    media.addTrack(e.track);
    if (trackAt === null) trackAt = performance.now();
    if (attached) playMuted(rtc);
    else if (!failover || !rtc.srcObject) attach();
  };
  pc.oniceconnectionstatechange = () => {
    const st = pc.iceConnectionState;
    log('webrtc-ice', { state: st, ms: since() });
    if (!alive(leg) || leg.iceAt || (st !== 'connected' && st !== 'completed')) return;
    leg.iceAt = performance.now();
    if (leg.framed) return;
    const bound = Math.max(DTLS_MIN_MS, DTLS_RTT_FACTOR * (dc.rttMs || 0));
    timers.push(setTimeout(() => {
      if (alive(leg) && !leg.framed && pc.connectionState !== 'connected') {
        // Not remembered: STUN got through, so the path works; a slow handshake more likely
        // means a busy server, and the next page load tries WebRTC again.
        webrtcFailed(leg, `no DTLS within ${bound} ms of ICE (RTT ${dc.rttMs} ms)`, false);
      }
    }, bound));
  };
  pc.onconnectionstatechange = () => {
    const st = pc.connectionState;
    log('webrtc-connection', { state: st, ms: since() });
    if (!alive(leg)) return;
    if (st === 'failed' || st === 'closed') webrtcFailed(leg, `connection ${st} (ICE/DTLS)`);
  };
  // ICE disconnected (consent checks unanswered): gone unless it comes back within the grace.
  pc.addEventListener('iceconnectionstatechange', () => {
    if (!alive(leg) || !leg.framed || pc.iceConnectionState !== 'disconnected') return;
    timers.push(setTimeout(() => {
      if (alive(leg) && pc.iceConnectionState === 'disconnected') {
        webrtcFailed(leg, `ICE disconnected for ${DISCONNECT_GRACE_MS} ms`);
      }
    }, DISCONNECT_GRACE_MS));
  });

  let rtt;
  let answeredAt = 0;
  try {
    await prepared.ready;
    if (!alive(leg)) return;
    // The POST's round trip is one RTT estimate of the early cut (see estimateRtt).
    const tPost = performance.now();
    const r = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
    rtt = Math.round(performance.now() - tPost);
    if (!alive(leg)) return;
    if (r.status !== 201) {
      const text = (await r.text().catch(() => '')).trim().slice(0, 200);
      const err = new Error(`WHEP POST answered HTTP ${r.status}${text ? `: ${text}` : ''}`);
      err.status = r.status;
      throw err;
    }
    // A 307 (a full node in a cluster) was followed: the session lives on the node that
    // answered, so its URL is resolved against the final URL, not the one POSTed to.
    const answeredBy = r.url || url;
    leg.server = new URL(answeredBy).origin;
    dc.whepFinalUrl = answeredBy;
    if (r.redirected) log('webrtc-redirected', { from: url, to: answeredBy });
    const loc = r.headers.get('Location');
    if (loc) leg.location = dc.whepLocation = new URL(loc, answeredBy).href;
    const ice = parseIceLinks(r.headers.get('Link'));
    if (ice.length) pc.setConfiguration({ ...pc.getConfiguration(), iceServers: ice });
    const answer = await r.text();
    if (!alive(leg)) return;
    rtt = estimateRtt(url, tPost, rtt);
    dc.rttMs = rtt;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    if (!alive(leg)) return;
    answeredAt = since();
    log('webrtc-answer', { ms: answeredAt, rtt });
  } catch (e) {
    if (!alive(leg)) return;
    // Not remembered: 409 (not live yet) and 503 (full, for now) say nothing about this
    // viewer's network; the next load tries WebRTC again.
    webrtcFailed(leg, `signaling: ${e.message || e}`, e.status !== 409 && e.status !== 503);
    return;
  }

  // Decide early: a reachable server answers a check within about one RTT. A firewall that drops
  // UDP silently gives no error at all; without this the attempt would wait for the timeout.
  // Time alone is not evidence: a starved browser may have sent one check by then (and not yet
  // read an answer), so the cut also wants ICE_MIN_CHECKS checks sent and none answered.
  const iceBound = Math.max(ICE_MIN_MS, ICE_RTT_FACTOR * rtt);
  dc.iceBoundMs = iceBound;
  const checkIce = async () => {
    if (!alive(leg) || leg.iceAt || leg.framed) return;
    const checks = await iceChecks(pc).catch(() => ({ sent: 0, answered: 0, succeeded: false }));
    if (!alive(leg) || leg.iceAt || leg.framed) return;
    log('webrtc-ice-checks', { ...checks, ms: since() });
    if (checks.answered || checks.succeeded) return; // under way: the DTLS bound and timeout follow
    if (checks.sent < ICE_MIN_CHECKS) {
      timers.push(setTimeout(checkIce, 100));
      return;
    }
    webrtcFailed(leg, `no ICE candidate pair answered (${checks.sent} checks, ` +
      `${since() - answeredAt} ms after the answer; RTT ${rtt} ms)`);
  };
  timers.push(setTimeout(checkIce, iceBound));

  let lastFrames = 0;
  let lastProgress = performance.now();
  let lastBytes = null;
  let lastBytesAt = 0;
  let lastFlow = performance.now();
  let checking = false;
  timers.push(setInterval(async () => {
    if (!alive(leg) || checking) return;
    checking = true;
    try {
      const stats = await pc.getStats();
      if (!alive(leg)) return;
      let frames = 0;
      let audioPackets = 0;
      let bytes = 0;
      let jitter = null;
      let rttNow = null;
      stats.forEach((r) => {
        if (r.type === 'inbound-rtp') {
          bytes += r.bytesReceived || 0;
          if (r.kind === 'audio') audioPackets = r.packetsReceived || 0;
          if (r.kind === 'video') {
            frames = r.framesDecoded || 0;
            if (r.jitterBufferEmittedCount) jitter = r.jitterBufferDelay / r.jitterBufferEmittedCount;
          }
        } else if (r.type === 'candidate-pair' && r.nominated && r.currentRoundTripTime !== undefined) {
          rttNow = r.currentRoundTripTime;
        }
      });
      const now = performance.now();
      dc.framesDecoded = frames;
      leg.attachIfDecoding(frames, now);
      dc.audioPacketsReceived = audioPackets;
      if (dc.path === 'webrtc') {
        if (lastBytes !== null && now > lastBytesAt) {
          dc.bitrate = Math.round(((bytes - lastBytes) * 8 * 1000) / (now - lastBytesAt));
        }
        if (jitter !== null) dc.latency = jitter + (rttNow !== null ? rttNow / 2 : 0);
        dc.rtt = rttNow;
      }
      if (lastBytes === null || bytes > lastBytes) lastFlow = now;
      lastBytes = bytes;
      lastBytesAt = now;
      if (frames > lastFrames) {
        lastFrames = frames;
        lastProgress = now;
        leg.lastFrameAt = now;
      } else if (leg.framed && now - lastFlow > DEAD_MS && alternatesFor(leg).length) {
        // Nothing at all arrives: the node or the path is gone (or the publisher stopped,
        // which the document says).
        const pbNow = await fetchPlayback(DOC_CHECK_MS).catch(() => null);
        if (!alive(leg)) return;
        if (pbNow && pbNow.state !== 'live' && pbNow.state !== 'starting') onPlayback(pbNow);
        else webrtcFailed(leg, `no RTP for ${DEAD_MS} ms`);
      } else if (!leg.framed && now - t0 > timeoutMs) {
        webrtcFailed(leg, `no frame within ${timeoutMs} ms`);
      } else if (leg.framed && now - lastProgress > freezeMs) {
        // Frozen: is it the publisher (offline) or the WebRTC path?
        const pbNow = await fetchPlayback(DOC_CHECK_MS).catch(() => null);
        if (!alive(leg)) return;
        if (pbNow && pbNow.state !== 'live' && pbNow.state !== 'starting') onPlayback(pbNow);
        else webrtcFailed(leg, `no new frame for ${freezeMs} ms`);
      }
    } catch (e) {
      log('stats-error', String(e));
    } finally {
      checking = false;
    }
  }, 200));
}

// WebRTC presented a frame: it is the path that stays. #rtc (stacked above #video) shows it from
// this frame on, the sound moves over, and LL-HLS stops pulling.
function webrtcFrame(leg, via) {
  leg.framed = true;
  leg.lastFrameAt = performance.now();
  dc.webrtcFirstFrameMs = Math.round(performance.now() - leg.t0);
  if (leg.failover) {
    dc.reconnects += 1;
    dc.reconnectGapMs = Math.round(performance.now() - leg.failover.lastFrameAt);
    dc.failover = null;
    log('webrtc-reconnected', { gapMs: dc.reconnectGapMs, node: leg.server, tried: leg.failover.tried.length });
  }
  log('webrtc-first-frame', { ms: dc.webrtcFirstFrameMs, via });
  firstFrame('webrtc', via);
  setPath('webrtc');
  stopLeg(legs.hls, 'WebRTC plays');
  decide('webrtc', `WebRTC frame ${dc.webrtcFirstFrameMs} ms after the attempt started`);
  setState('live');
}

// The WHEP URLs a session that died may move to: the document's, least-loaded first, without
// the nodes this failover already tried (the dead one first of all).
function alternatesFor(leg) {
  const w = dc.playback && dc.playback.webrtc;
  if (!w || !Array.isArray(w.alternates) || !w.alternates.length) return [];
  const tried = new Set((leg.failover && leg.failover.tried) || []);
  for (const u of [leg.url, leg.server && `${leg.server}/`]) {
    try {
      if (u) tried.add(new URL(u).origin);
    } catch {
      // not a URL
    }
  }
  return [w.whep, ...w.alternates].filter((u, i, all) => {
    try {
      return all.indexOf(u) === i && !tried.has(new URL(u).origin);
    } catch {
      return false;
    }
  });
}

// A WebRTC session that played (or a failover attempt) died: the next node over WebRTC.
function failOver(leg, reason) {
  if (!(leg.framed || leg.failover) || legs.hls) return false;
  const tried = ((leg.failover && leg.failover.tried) || []).slice();
  for (const u of [leg.url, leg.server && `${leg.server}/`]) {
    try {
      if (u && !tried.includes(new URL(u).origin)) tried.push(new URL(u).origin);
    } catch {
      // not a URL
    }
  }
  const next = alternatesFor(leg)[0];
  if (!next || tried.length > MAX_FAILOVER) return false;
  const f = leg.failover || {
    since: performance.now(),
    lastFrameAt: leg.lastFrameAt || performance.now(),
    reason,
  };
  const failover = { ...f, tried };
  dc.failover = { since: Math.round(f.since), from: tried, to: next, reason: f.reason };
  log('webrtc-failover', { reason, to: next, tried });
  leg.keepPicture = true; // the last picture stays while the next node connects
  stopLeg(leg, reason);
  startWebRtc(next, dc.playback, failover);
  return true;
}

function webrtcFailed(leg, reason, remember = true) {
  if (!alive(leg)) return;
  log('webrtc-failed', { reason, remember, ms: Math.round(performance.now() - leg.t0) });
  dc.fallbackReason = reason;
  if (failOver(leg, reason)) return;
  dc.failover = null;
  if (remember) {
    dc.webrtcFailed = reason;
    safeSession('set', reason);
  }
  leg.keepPicture = leg.framed || !!leg.failover;
  stopLeg(leg, reason);
  if (!legs.hls) {
    // Mid-stream (the race had already stopped LL-HLS), or no HLS offered.
    const pb = dc.playback;
    if (!pb || !pb.hls) {
      if (rtc.srcObject) rtc.srcObject = null;
      setPath(null);
      setState('error', `WebRTC failed (${reason}) and no HLS URL is offered`);
      return;
    }
    startHls(pb.hls);
  }
  decide('hls', reason);
}

// ───────────────────────────── LL-HLS ─────────────────────────────

const mse = !!(window.MediaSource || window.ManagedMediaSource);
let hlsJsPromise = null;

function loadHlsJs() {
  if (window.Hls) return Promise.resolve(window.Hls);
  if (!hlsJsPromise) {
    hlsJsPromise = new Promise((resolve, reject) => {
      // The HTML preloads this URL, so the download runs while the playback document is fetched.
      const el = document.createElement('script');
      el.src = new URL('web/hls.light.min.js', root).href;
      el.async = true;
      el.onload = () => {
        const e = performance.getEntriesByName(el.src)[0];
        log('hls-js', e ? [Math.round(e.startTime), Math.round(e.responseEnd)] : undefined);
        window.Hls ? resolve(window.Hls) : reject(new Error('hls.js did not load'));
      };
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

async function startHls(url) {
  dc.hlsUrl = url;
  log('hls-start', url);
  const loaded = []; // [time, bytes] of recent parts/segments, for the bitrate
  let lastTime = -1;
  let lastAdvance = performance.now();
  let watchdog = null;
  const leg = {
    kind: 'hls',
    url,
    hls: null,
    framed: false,
    stop() {
      clearInterval(watchdog);
      video.removeEventListener('timeupdate', onProgress);
      // destroy() aborts every request in flight: no HLS traffic after this.
      if (leg.hls) leg.hls.destroy();
      video.removeAttribute('src');
      video.load();
    },
  };
  legs.hls = leg;
  if (front() !== video) video.muted = true; // not on screen: silent

  function onProgress() {
    if (!alive(leg)) return;
    const t = video.currentTime;
    if (t !== lastTime) {
      if (lastTime >= 0 && t > lastTime && dc.path === 'hls') setState('live');
      lastTime = t;
      lastAdvance = performance.now();
    }
  }
  watchdog = setInterval(() => {
    if (!alive(leg)) return;
    onProgress();
    const now = performance.now();
    while (loaded.length && now - loaded[0][0] > 4000) loaded.shift();
    if (dc.path === 'hls') {
      if (loaded.length > 1) {
        const bytes = loaded.reduce((a, [, b]) => a + b, 0);
        dc.bitrate = Math.round((bytes * 8 * 1000) / Math.max(1000, now - loaded[0][0]));
      }
      if (leg.hls) {
        const pdt = leg.hls.playingDate;
        dc.latency = typeof leg.hls.latency === 'number' && leg.hls.latency > 0 ? leg.hls.latency : null;
        dc.latencyPdt = pdt ? (Date.now() - pdt.getTime()) / 1000 : null;
      }
    }
    // Stalled while the stream is live: rebuild the player (new session after a publisher drop,
    // a CDN hiccup, …). The poll stops us first when the stream is offline.
    if (now - lastAdvance > HLS_STALL_MS && dc.playback && dc.playback.state === 'live') {
      log('hls-stalled', { seconds: Math.round((now - lastAdvance) / 1000) });
      stopLeg(leg, 'HLS stalled');
      startHls(url);
    }
  }, 250);

  const attach = () => {
    watchFirstFrame(video, leg, (via) => hlsFrame(leg, via));
    playMuted(video);
    video.addEventListener('timeupdate', onProgress);
  };

  if (mse) {
    let Hls;
    try {
      Hls = await loadHlsJs();
    } catch (e) {
      if (!alive(leg)) return;
      if (!video.canPlayType('application/vnd.apple.mpegurl')) {
        hlsFailed(leg, String(e.message || e));
        return;
      }
    }
    if (!alive(leg)) return;
    if (Hls && Hls.isSupported()) {
      dc.hlsJs = Hls.version;
      const hls = takeWarm('hls') || newHls(Hls);
      leg.hls = hls;
      // The start, step by step, until the first frame (tests and the debug overlay read it).
      const startStep = (name) => (_e, data) => {
        if (leg.framed || !alive(leg)) return;
        const f = data && (data.part || data.frag);
        // req: [start, first byte, end] of the request, ms since navigation.
        const stats = name === 'loaded' ? f && f.stats : data && data.stats;
        const st = stats && stats.loading;
        log(`hls-${name}`, {
          sn: f ? f.sn : undefined,
          part: data && data.part ? data.part.index : undefined,
          type: data && data.type,
          req: st ? [st.start, st.first, st.end].map(Math.round) : undefined,
        });
      };
      hls.on(Hls.Events.MANIFEST_LOADED, startStep('manifest'));
      hls.on(Hls.Events.MEDIA_ATTACHED, startStep('attached'));
      hls.on(Hls.Events.LEVEL_LOADED, startStep('level'));
      hls.on(Hls.Events.FRAG_LOADING, startStep('loading'));
      hls.on(Hls.Events.FRAG_LOADED, startStep('loaded'));
      hls.on(Hls.Events.BUFFER_APPENDED, startStep('appended'));
      hls.on(Hls.Events.FRAG_BUFFERED, startStep('buffered'));

      video.addEventListener('seeked', () => alive(leg) && !leg.framed && log('hls-seeked', video.currentTime), { once: true });
      // Picture from the first part. hls.js moves the playhead (at 0) to its start position only
      // on its first FRAG_BUFFERED, and for LL-HLS parts that event comes once the whole run of
      // parts it loads in a row is in: from the start part on to the end of the segment, each
      // one past the live edge waiting for the encoder (a part target each, up to a GOP: 200 to
      // 800 ms in the firewall timelines). So as soon as the first append gives a buffered range,
      // seek into it here; hls.js's own start seek then finds the playhead at or past its start
      // position (the same independent part, startOnSegmentBoundary) and leaves it.
      const startAtFirstPart = () => {
        if (!alive(leg) || leg.framed || video.seeking) return;
        const b = video.buffered; // audio ∩ video: empty until both have the part
        if (!b.length) return;
        hls.off(Hls.Events.BUFFER_APPENDED, startAtFirstPart);
        const t = video.currentTime;
        if (t < b.start(0)) {
          // 50 ms inside the range (about two AAC frames), not on its edge: a seek to exactly
          // the range's start stalls in Chromium with a second of media buffered after it, until
          // hls.js's gap controller nudges it a few ms on (150–300 ms later in the timelines).
          const to = Math.min(b.start(0) + 0.05, (b.start(0) + b.end(0)) / 2);
          log('hls-early-seek', { from: t, to, range: [b.start(0), b.end(0)] });
          video.currentTime = to;
        }
      };
      hls.on(Hls.Events.BUFFER_APPENDED, startAtFirstPart);
      hls.on(Hls.Events.LEVEL_LOADED, (_e, data) => {
        if (data.stats && data.stats.loaded) dc.hlsBytes += data.stats.loaded;
      });
      hls.on(Hls.Events.FRAG_LOADED, (_e, data) => {
        const st = (data.part && data.part.stats) || (data.frag && data.frag.stats);
        if (st && st.loaded) {
          dc.hlsBytes += st.loaded;
          loaded.push([performance.now(), st.loaded]);
        }
      });
      hls.on(Hls.Events.ERROR, (_e, data) => {
        if (!alive(leg) || !data.fatal) return;
        log('hls-fatal', { type: data.type, details: data.details });
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
          hls.recoverMediaError();
        } else {
          // Network: retry from scratch shortly (the poll stops us if the stream went offline).
          setTimeout(() => {
            if (!alive(leg)) return;
            stopLeg(leg, 'HLS fatal error');
            if (dc.playback && dc.playback.hls) startHls(dc.playback.hls);
          }, 1000);
        }
      });
      if (!hls.media) hls.attachMedia(video);
      hls.loadSource(url);
      attach();
      return;
    }
  }
  if (video.canPlayType('application/vnd.apple.mpegurl')) {
    // Safari without MSE (older iOS): native HLS, which does LL-HLS itself.
    video.src = url;
    attach();
    return;
  }
  hlsFailed(leg, 'this browser can play neither WebRTC nor HLS');
}

// LL-HLS presented a frame. It goes on screen unless WebRTC already is; while WebRTC is still
// connecting, the viewer watches LL-HLS and the decision waits for WebRTC's frame or its cut.
function hlsFrame(leg, via) {
  leg.framed = true;
  log('hls-first-frame', { via });
  firstFrame('hls', via);
  if (!legs.webrtc && rtc.srcObject) rtc.srcObject = null; // the frozen WebRTC picture goes now
  setPath('hls');
}

function hlsFailed(leg, message) {
  stopLeg(leg, message);
  if (legs.webrtc) return; // WebRTC may still deliver; its own cut reports the error
  setPath(null);
  setState('error', message);
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
  // Both timings, since navigation: the first picture, and the choice of the path that stays.
  const ff = dc.firstFrame;
  lines.push(`first     ${ff ? `${ff.ms} ms · ${ff.path}` : '–'}`);
  const d = dc.decision;
  lines.push(`decided   ${d ? `${d.path} at ${d.ms} ms · ${d.reason}` : legs.webrtc ? 'WebRTC connecting…' : '–'}`);
  if (dc.rttMs !== null) lines.push(`rtt       ${dc.rttMs} ms · ICE bound ${dc.iceBoundMs ?? '–'} ms`);
  if (dc.path === 'webrtc') {
    lines.push(`frames    ${dc.framesDecoded}${dc.webrtcFirstFrameMs !== null ? ` (first after ${dc.webrtcFirstFrameMs} ms)` : ''}`);
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

// Resource timing keeps 250 entries by default and LL-HLS makes several requests a second: make
// room, so a later WHEP POST can still be timed (estimateRtt).
performance.addEventListener('resourcetimingbufferfull', () => performance.clearResourceTimings());
window.addEventListener('pagehide', () => {
  stopAll('page closed');
  dropWarm();
});
if (!stream) {
  setState('error', 'no stream named in the URL');
} else {
  document.title = `${stream} · live`;
  const nav = performance.getEntriesByType('navigation')[0];
  const res = (name) => {
    const e = performance.getEntriesByType('resource').find((r) => r.name.endsWith(name));
    return e ? [Math.round(e.startTime), Math.round(e.responseEnd)] : null;
  };
  log('script', nav ? { html: Math.round(nav.responseEnd), interactive: Math.round(nav.domInteractive), js: res('watch.js'), css: res('watch.css'), hlsjs: res('hls.light.min.js') } : undefined);
  setState('starting');
  pollLoop();
  warmUp();
}
