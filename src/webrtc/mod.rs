//! What WHIP ingest ([`crate::ingest::whip`]) and WHEP playback ([`crate::egress::sfu`]) share
//! about WebRTC signaling. It sits below both and imports neither, so each role uses it without
//! an import cycle.

pub mod offer;

pub use offer::Role;
