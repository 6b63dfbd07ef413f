//! The one outbound HTTP/1.1 client: pooled keep-alive connections over plain TCP (hyper-util's
//! client). The LL-HLS proxy to a stream's origin node (`crate::cluster::hls_proxy`) and the edge
//! pull's WHEP signaling (`crate::ingest::whep_pull`) both go through it; callers bound each
//! exchange in time themselves.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A client with bounded connects and a bounded idle pool.
pub fn new() -> Client {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(Duration::from_secs(2)));
    conn.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build(conn)
}

/// The process's client, for callers that hold none of their own.
pub fn shared() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(new)
}
