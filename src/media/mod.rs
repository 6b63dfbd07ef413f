//! The one media model in the middle: streams (named live programs) made of tracks (codec
//! parameters) carrying frames (shared payloads). Every ingest produces it; every egress reads it.

pub mod bridge;
pub mod codec;
pub mod control;
pub mod frame;
pub mod stream;
pub mod track;

pub use control::{KickSignal, PublisherControl};
pub use frame::{Frame, TrackKind, CLOCK_HZ};
pub use stream::{
    Envelope, LayerFrame, MediaEvent, PublishError, Publisher, Registry, Stream, StreamState,
    MAX_LAYERS,
};
pub use track::{AacParams, Codec, H264Params, OpusParams, TrackSet};
