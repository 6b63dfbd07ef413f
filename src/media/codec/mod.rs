//! Codec parameter parsing: H.264 (avcC, SPS) and AAC (AudioSpecificConfig).

pub mod aac;
pub mod h264;
