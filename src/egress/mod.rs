//! Egress engines: each reads the media model and delivers one path (LL-HLS today).

pub mod hls;
pub mod push;
pub mod sfu;
