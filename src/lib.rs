//! deltacast: a live media relay. One program in (RTMP, WHIP); out over WebRTC, LL-HLS and RTMP
//! fan-out. See docs/ARCHITECTURE.md for the module map and data flow.

pub mod affinity;
pub mod app;
pub mod cluster;
pub mod config;
pub mod doctor;
pub mod egress;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ingest;
pub mod io;
pub mod media;
pub mod metrics;
pub mod provider;
pub mod webrtc;
