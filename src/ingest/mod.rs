//! Ingest: protocols in, the media model out.
//!
//! - [`flv`]: sans-IO demuxer of FLV audio/video tag bodies into codec parameters and frames; the
//!   one path every FLV-shaped source goes through.
//! - [`rtmp`]: the RTMP server driver (tokio + `rml_rtmp`): handshake, connect/publish with stream
//!   keys, timeouts and connection limits, media into a [`crate::media::Publisher`].
//! - [`demo`]: the built-in looping program (`--demo`), an embedded FLV file played in real time
//!   through [`flv`].
//!
//! Every log line from here carries `side = "ingest"`, the peer address and, once known, the
//! stream name; publish keys are secrets and never appear in full.

pub mod demo;
pub mod flv;
pub mod rtmp;
pub mod simulcast;
pub mod whep_pull;
pub mod whip;
