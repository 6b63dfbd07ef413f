//! One WebRTC peer: a str0m `Rtc` and its liveness, driven by the application's loop (str0m's
//! own examples: one client type, the caller owns the loop).
//!
//! [`Peer`] is the transport half (mediasoup's Transport): input, timeouts, output, the connect
//! and idle deadlines, the admission slot. What the peer is *for* is its role ([`PeerRole`],
//! mediasoup's Producer/Consumer): a viewer writes RTP, a publisher takes depacketized frames, an
//! upstream subscriber (a later edge node) would take frames like a publisher. The role sees
//! str0m's events after the peer has handled the liveness ones (connected, ICE disconnected) and
//! writes into the `Rtc` through [`Link`]; the peer drains what it wrote.
//!
//! Sans-IO: packets and time come in as arguments, datagrams go out into the caller's outbox.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use super::admission::Slot;
use crate::io::Outgoing;

/// Why a peer was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Deleted,
    IceDisconnected,
    Idle,
    ConnectTimeout,
    StreamEnded,
    RtcError,
    Shutdown,
    /// The API asked the stream's publisher to leave.
    Kicked,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Deleted => "deleted",
            DropReason::IceDisconnected => "ice-disconnected",
            DropReason::Idle => "idle",
            DropReason::ConnectTimeout => "connect-timeout",
            DropReason::StreamEnded => "stream-ended",
            DropReason::RtcError => "rtc-error",
            DropReason::Shutdown => "shutdown",
            DropReason::Kicked => "kicked",
        }
    }
}

/// The connect and idle deadlines every peer lives under.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// ICE + DTLS must complete within this.
    pub connect: Duration,
    /// Nothing received for this long: the peer is gone.
    pub idle: Duration,
}

/// The transport state of a peer that its role may touch: the `Rtc` to write into, and who
/// the peer is.
pub struct Link {
    pub id: u64,
    pub stream: Arc<str>,
    pub local_ufrag: String,
    pub rtc: Rtc,
    connected: bool,
    /// When str0m next wants [`Peer::handle_timeout`].
    pub next_timeout: Instant,
    pub last_rx: Instant,
    pub created: Instant,
    /// Where this peer's datagrams go (the ICE-nominated remote address).
    pub remote: Option<SocketAddr>,
    pub dead: Option<DropReason>,
    /// Bytes of datagrams handed to the outbox.
    pub bytes_out: u64,
    /// Admission slot: pending until ICE + DTLS complete, given back when the peer is dropped.
    slot: Option<Slot>,
}

impl Link {
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Mark the peer dead (the first reason wins).
    pub fn kill(&mut self, why: DropReason) {
        self.dead.get_or_insert(why);
    }
}

/// What a peer is for. Called from [`Peer::drain`] with every str0m event; `Connected` comes
/// after the link is marked connected, ICE disconnection after it is marked dead.
pub trait PeerRole {
    /// For logs: "viewer", "publisher".
    fn kind(&self) -> &'static str;
    fn on_event(&mut self, link: &mut Link, e: Event, now: Instant);
}

/// One WebRTC peer: its [`Link`] and its role.
pub struct Peer<R> {
    pub link: Link,
    pub role: R,
}

impl<R: PeerRole> Peer<R> {
    pub fn new(
        id: u64,
        stream: Arc<str>,
        rtc: Rtc,
        local_ufrag: String,
        role: R,
        now: Instant,
    ) -> Self {
        Self {
            link: Link {
                id,
                stream,
                local_ufrag,
                rtc,
                connected: false,
                next_timeout: now,
                last_rx: now,
                created: now,
                remote: None,
                dead: None,
                bytes_out: 0,
                slot: None,
            },
            role,
        }
    }

    /// The same peer in a wider role (a worker's role enum).
    pub fn with_role<S>(self, f: impl FnOnce(R) -> S) -> Peer<S> {
        Peer {
            link: self.link,
            role: f(self.role),
        }
    }

    pub fn id(&self) -> u64 {
        self.link.id
    }

    pub fn connected(&self) -> bool {
        self.link.connected
    }

    /// Hold the peer's admission slot (see [`super::admission`]).
    pub fn set_slot(&mut self, slot: Option<Slot>) {
        self.link.slot = slot;
    }

    /// Does this packet belong to this peer (STUN integrity, or a known remote address)?
    pub fn accepts(
        &self,
        now: Instant,
        proto: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) -> bool {
        match Receive::new(proto, src, dst, data) {
            Ok(r) => self.link.rtc.accepts(&Input::Receive(now, r)),
            Err(_) => false,
        }
    }

    /// Feed one packet (UDP, or one RFC 4571 frame of ICE-TCP). Malformed input is dropped
    /// (str0m rejects it without a state change).
    pub fn handle_input(
        &mut self,
        now: Instant,
        proto: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
        out: &mut Vec<Outgoing>,
    ) {
        let Ok(r) = Receive::new(proto, src, dst, data) else {
            return;
        };
        self.link.last_rx = now;
        if let Err(e) = self.link.rtc.handle_input(Input::Receive(now, r)) {
            tracing::debug!(
                peer = self.link.id,
                role = self.role.kind(),
                "rtc input: {e}"
            );
        }
        self.drain(now, out);
    }

    /// Drive str0m's timers (ICE consent, RTCP, DTLS retransmits) and send what is due.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        if let Err(e) = self.link.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(
                peer = self.link.id,
                role = self.role.kind(),
                "rtc timeout: {e}"
            );
        }
        self.drain(now, out);
    }

    /// Drain str0m's output until it returns a timeout: datagrams into `out`, events to the
    /// role.
    pub fn drain(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        loop {
            match self.link.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    // Never spin: str0m may ask for "now".
                    self.link.next_timeout = t.max(now + Duration::from_micros(500));
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    self.link.remote = Some(t.destination);
                    let data: Vec<u8> = t.contents.into();
                    self.link.bytes_out += data.len() as u64;
                    out.push(Outgoing {
                        dst: t.destination,
                        data,
                    });
                }
                Ok(Output::Event(e)) => {
                    match &e {
                        Event::Connected => {
                            self.link.connected = true;
                            if let Some(s) = self.link.slot.as_mut() {
                                s.connected();
                            }
                            tracing::debug!(peer = self.link.id, stream = %self.link.stream,
                                role = self.role.kind(), "peer connected");
                        }
                        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                            self.link.kill(DropReason::IceDisconnected);
                        }
                        _ => {}
                    }
                    self.role.on_event(&mut self.link, e, now);
                }
                Err(e) => {
                    tracing::info!(peer = self.link.id, stream = %self.link.stream,
                        role = self.role.kind(), "rtc error: {e}");
                    self.link.kill(DropReason::RtcError);
                    return;
                }
            }
        }
    }

    /// Apply the connect and idle deadlines; true when the peer is (now) dead.
    pub fn check_deadlines(&mut self, now: Instant, d: &Deadlines) -> bool {
        if self.link.dead.is_none() {
            if now.duration_since(self.link.last_rx) > d.idle {
                self.link.dead = Some(DropReason::Idle);
            } else if !self.link.connected && now.duration_since(self.link.created) > d.connect {
                self.link.dead = Some(DropReason::ConnectTimeout);
            }
        }
        self.link.dead.is_some()
    }

    /// When the idle or connect deadline falls (str0m's own timer is
    /// [`Link::next_timeout`]).
    pub fn liveness_deadline(&self, d: &Deadlines) -> Instant {
        let mut t = self.link.last_rx + d.idle;
        if !self.link.connected {
            t = t.min(self.link.created + d.connect);
        }
        t
    }

    /// Close the peer (DTLS close, ICE stops) and flush what that sends.
    pub fn close(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        self.link.rtc.disconnect();
        self.drain(now, out);
    }
}

/// Host candidates of a peer on a worker: UDP, plus passive ICE-TCP (RFC 6544) when configured.
pub fn add_candidates(rtc: &mut Rtc, udp: &[SocketAddr], tcp: &[SocketAddr]) {
    for c in udp {
        if let Ok(c) = Candidate::host(*c, "udp") {
            rtc.add_local_candidate(c);
        }
    }
    for c in tcp {
        if let Ok(c) = Candidate::builder()
            .tcp()
            .host(*c)
            .tcptype(str0m::net::TcpType::Passive)
            .build()
        {
            rtc.add_local_candidate(c);
        }
    }
}
