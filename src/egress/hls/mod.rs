//! LL-HLS: CMAF muxing, part/segment cutting, playlists, and the live window the origin serves.

pub mod cmaf;
pub mod packager;
pub mod playlist;
pub mod segmenter;
pub mod store;
