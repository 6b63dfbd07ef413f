//! Where an edge pulls a stream from, as the cluster sees it: the edge pull's resolver
//! interface (`crate::ingest::whep_pull`), and a resolver that asks the configured
//! `[[streams]] pull` URLs first and the Redis registry second.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use crate::ingest::whep_pull::{OriginResolver, Upstream};

/// The first resolver that knows an upstream wins: a stream an operator pinned to an upstream
/// (`[[streams]] pull`) keeps it inside a cluster too.
pub struct FirstOf(pub Vec<Arc<dyn OriginResolver>>);

impl OriginResolver for FirstOf {
    fn upstream<'a>(
        &'a self,
        stream: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Upstream>> + Send + 'a>> {
        Box::pin(async move {
            for r in &self.0 {
                if let Some(u) = r.upstream(stream).await {
                    return Some(u);
                }
            }
            None
        })
    }
}
