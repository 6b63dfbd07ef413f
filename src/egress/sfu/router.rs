//! The router thread: the SFU's one registry sink. Packetizes every frame once and hands the same
//! `Arc<SfuFrame>` to every worker over its bounded channel (a full channel loses the frame for
//! that worker only; the worker notices the gap in `index` and waits for the next keyframe).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::packetizer::{H264Packetizer, RtpPayload};
use super::{MediaMsg, SfuFrame};
use crate::io::Waker;
use crate::media::bridge::{Bridge, BridgeConfig};
use crate::media::{Codec, Envelope, Frame, LayerFrame, MediaEvent, TrackKind, MAX_LAYERS};

#[derive(Default)]
pub struct RouterShared {
    pub frames: AtomicU64,
    pub packets: AtomicU64,
    /// Frames a worker's queue had no room for.
    pub frames_dropped: AtomicU64,
    pub packetize_errors: AtomicU64,
}

#[derive(Default)]
struct StreamCtx {
    epoch: u64,
    video: Option<H264Packetizer>,
    /// Frame counters per simulcast layer (0 = the stream's video track).
    video_index: [u64; MAX_LAYERS],
    /// Packetizers of the lower simulcast layers, with the codec they were built from.
    layers: [Option<(Arc<Codec>, H264Packetizer)>; MAX_LAYERS],
    audio_index: u64,
    /// Opus goes out as is; AAC is bridged to Opus here, once per stream, off the SFU workers.
    audio: AudioPath,
    /// Opus frames to send for the current input frame, reused frame after frame.
    audio_out: Vec<Frame>,
}

#[derive(Default)]
enum AudioPath {
    #[default]
    None,
    Opus,
    Bridged(Box<Bridge>),
}

/// Run until the registry goes away.
pub fn run(
    rx: Receiver<Envelope>,
    targets: Vec<(Sender<MediaMsg>, Waker)>,
    max_payload: usize,
    shared: Arc<RouterShared>,
) {
    let mut streams: HashMap<Arc<str>, StreamCtx> = HashMap::new();
    let mut woken = vec![false; targets.len()];
    while let Ok(env) = rx.recv() {
        let mut next = Some(env);
        // Drain what is queued, then wake each worker once.
        while let Some(env) = next.take() {
            handle(
                env,
                &mut streams,
                &targets,
                &mut woken,
                max_payload,
                &shared,
            );
            next = rx.try_recv().ok();
        }
        for (i, w) in woken.iter_mut().enumerate() {
            if *w {
                targets[i].1.wake();
                *w = false;
            }
        }
    }
}

fn broadcast(
    targets: &[(Sender<MediaMsg>, Waker)],
    woken: &mut [bool],
    shared: &RouterShared,
    make: impl Fn() -> MediaMsg,
) {
    for (i, (tx, _)) in targets.iter().enumerate() {
        match tx.try_send(make()) {
            Ok(()) => woken[i] = true,
            Err(TrySendError::Full(_)) => {
                shared.frames_dropped.fetch_add(1, Ordering::Relaxed);
                woken[i] = true;
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Packetize one video frame of `layer` (index left 0 for the caller to set).
fn video_frame(
    name: &Arc<str>,
    epoch: u64,
    layer: u8,
    pk: &H264Packetizer,
    f: &Frame,
    max_payload: usize,
    shared: &RouterShared,
) -> Option<SfuFrame> {
    let mut packets = Vec::with_capacity(f.data.len() / max_payload + 2);
    if let Err(e) = pk.packetize(&f.data, f.keyframe, &mut packets) {
        shared.packetize_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(stream = %name, layer, "SFU packetizer: {e}");
        return None;
    }
    shared.frames.fetch_add(1, Ordering::Relaxed);
    shared
        .packets
        .fetch_add(packets.len() as u64, Ordering::Relaxed);
    Some(SfuFrame {
        stream: name.clone(),
        epoch,
        index: 0,
        kind: TrackKind::Video,
        layer,
        pts: f.pts,
        keyframe: f.keyframe,
        bytes: f.data.len(),
        packets,
        wallclock: f.wallclock,
    })
}

/// A lower simulcast layer's frame: its own packetizer (its own SPS/PPS) and frame counter.
fn layer_frame(
    name: &Arc<str>,
    ctx: &mut StreamCtx,
    lf: &LayerFrame,
    max_payload: usize,
    shared: &RouterShared,
) -> Option<Arc<SfuFrame>> {
    let l = lf.layer as usize;
    if lf.session != ctx.epoch || l == 0 || l >= MAX_LAYERS {
        return None;
    }
    let stale = ctx.layers[l]
        .as_ref()
        .is_none_or(|(c, _)| !Arc::ptr_eq(c, &lf.codec));
    if stale {
        let Codec::H264(p) = &*lf.codec else {
            return None;
        };
        match H264Packetizer::from_params(p, max_payload) {
            Ok(pk) => ctx.layers[l] = Some((lf.codec.clone(), pk)),
            Err(e) => {
                tracing::warn!(stream = %name, layer = l, side = "egress", "SFU: {e}");
                ctx.layers[l] = None;
                return None;
            }
        }
    }
    let (_, pk) = ctx.layers[l].as_ref()?;
    let frame = video_frame(
        name,
        ctx.epoch,
        lf.layer,
        pk,
        &lf.frame,
        max_payload,
        shared,
    )?;
    ctx.video_index[l] += 1;
    Some(Arc::new(SfuFrame {
        index: ctx.video_index[l],
        ..frame
    }))
}

fn handle(
    env: Envelope,
    streams: &mut HashMap<Arc<str>, StreamCtx>,
    targets: &[(Sender<MediaMsg>, Waker)],
    woken: &mut [bool],
    max_payload: usize,
    shared: &RouterShared,
) {
    let name = env.stream;
    match env.event {
        MediaEvent::Tracks(t) => {
            let ctx = streams.entry(name.clone()).or_default();
            ctx.epoch = t.session;
            ctx.layers = Default::default();
            ctx.video = match t.h264() {
                Some(p) => match H264Packetizer::from_params(p, max_payload) {
                    Ok(pk) => Some(pk),
                    Err(e) => {
                        tracing::warn!(stream = %name, side = "egress", "SFU: {e}");
                        None
                    }
                },
                None => None,
            };
            ctx.audio = match &t.audio {
                Some(Codec::Opus(_)) => AudioPath::Opus,
                Some(c @ Codec::Aac(_)) => match Bridge::for_webrtc(c, &BridgeConfig::default()) {
                    Ok(Some(b)) => AudioPath::Bridged(Box::new(b)),
                    Ok(None) => AudioPath::Opus,
                    Err(e) => {
                        tracing::warn!(stream = %name, side = "egress", path = "webrtc",
                            "audio not sent to WebRTC viewers: {e}");
                        AudioPath::None
                    }
                },
                _ => AudioPath::None,
            };
            broadcast(targets, woken, shared, || MediaMsg::Reset(name.clone()));
        }
        MediaEvent::Frame(f) => {
            let Some(ctx) = streams.get_mut(&name) else {
                return;
            };
            match f.kind {
                TrackKind::Video => {
                    let Some(pk) = &ctx.video else {
                        return;
                    };
                    let Some(frame) = video_frame(&name, ctx.epoch, 0, pk, &f, max_payload, shared)
                    else {
                        return;
                    };
                    ctx.video_index[0] += 1;
                    let frame = Arc::new(SfuFrame {
                        index: ctx.video_index[0],
                        ..frame
                    });
                    broadcast(targets, woken, shared, || MediaMsg::Frame(frame.clone()));
                }
                TrackKind::Audio => {
                    let mut opus = std::mem::take(&mut ctx.audio_out);
                    match &mut ctx.audio {
                        AudioPath::None => return,
                        AudioPath::Opus => opus.push((*f).clone()),
                        AudioPath::Bridged(b) => b.push_into(&f, &mut opus),
                    }
                    for o in opus.drain(..) {
                        ctx.audio_index += 1;
                        let frame = Arc::new(SfuFrame {
                            stream: name.clone(),
                            epoch: ctx.epoch,
                            index: ctx.audio_index,
                            kind: TrackKind::Audio,
                            layer: 0,
                            pts: o.pts,
                            keyframe: true,
                            bytes: o.data.len(),
                            // One Opus packet is one RTP payload (the one copy into Arc<[u8]>).
                            packets: vec![RtpPayload {
                                data: Arc::from(&o.data[..]),
                                marker: false,
                            }],
                            wallclock: o.wallclock,
                        });
                        broadcast(targets, woken, shared, || MediaMsg::Frame(frame.clone()));
                    }
                    ctx.audio_out = opus;
                }
            }
        }
        MediaEvent::Layer(lf) => {
            let Some(ctx) = streams.get_mut(&name) else {
                return;
            };
            if let Some(frame) = layer_frame(&name, ctx, &lf, max_payload, shared) {
                broadcast(targets, woken, shared, || MediaMsg::Frame(frame.clone()));
            }
        }
        MediaEvent::Idle => {
            if let Some(ctx) = streams.get_mut(&name) {
                if let AudioPath::Bridged(b) = &mut ctx.audio {
                    b.reset();
                }
            }
            broadcast(targets, woken, shared, || MediaMsg::Reset(name.clone()));
        }
        MediaEvent::Ended => {
            streams.remove(&name);
            broadcast(targets, woken, shared, || MediaMsg::Ended(name.clone()));
        }
    }
}
