//! The edge pull's interface as the cluster uses it: where an edge pulls a stream from.
//!
//! The pull itself (a WHEP subscriber feeding the local registry, `PullManager`) lives in
//! `crate::ingest::whep_pull`, which defines these same two items; once both are in the tree this
//! file is replaced by a re-export of them (`pub use crate::ingest::whep_pull::{OriginResolver,
//! Upstream};`), and `crate::app` hands [`crate::cluster::Cluster::resolver`] to the pull manager.

use std::future::Future;
use std::pin::Pin;

/// A WHEP endpoint to pull a stream from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// e.g. `http://10.0.0.5:8080/whep/name`
    pub whep_url: String,
    pub bearer: Option<String>,
}

/// Where to pull a stream from when it is not live on this node.
pub trait OriginResolver: Send + Sync + 'static {
    /// `None`: nowhere (the WHEP POST answers 404 as on a single node).
    fn upstream<'a>(
        &'a self,
        stream: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Upstream>> + Send + 'a>>;
}
