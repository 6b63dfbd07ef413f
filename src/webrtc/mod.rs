//! What every WebRTC peer of this node shares, whatever its role: the peer itself (a str0m
//! `Rtc` with its liveness, input, timeouts and output: [`peer`]), the one SDP offer check
//! ([`offer`]) and admission of sessions ([`admission`]). It sits below WHIP ingest
//! ([`crate::ingest::whip`], the publisher role) and the SFU ([`crate::egress::sfu`], the viewer
//! role and the workers that host both) and imports neither.

pub mod admission;
pub mod offer;
pub mod peer;

pub use offer::Role;
