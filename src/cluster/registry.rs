//! The registry in Redis: this node's heartbeat (writes), and the cluster view (reads).
//!
//! Key layout (every key under `deltacast:`; docs/CLUSTER.md has the same table):
//!
//! | key | type | value | lifetime |
//! |---|---|---|---|
//! | `deltacast:node:{id}` | string | the node's [`NodeInfo`] as JSON | `ttl_ms`, refreshed each heartbeat |
//! | `deltacast:nodes` | sorted set | node ids (score: last write, ms) | index; entries older than 10 × ttl are swept |
//! | `deltacast:origin:{stream}` | string | origin node id | `ttl_ms`, refreshed by the origin; deleted (if still its own) when the stream ends |
//! | `deltacast:streams` | sorted set | stream names (score: last write, ms) | index, swept like `nodes` |
//! | `deltacast:edges:{stream}` | sorted set | ids of nodes pulling the stream (score: last write, ms) | whole key `ttl_ms`; members older than 2 × ttl are ignored |
//! | `deltacast:upstream:{stream}` | hash | edge node id → the node id (or URL) it pulls from | whole key `ttl_ms`; only fields of live edges are read |
//!
//! A node is alive while its node key exists; how long ago it wrote is read from the key's
//! remaining TTL, so no clock of another machine is compared. Every heartbeat writes every key of
//! this node again, so a Redis that restarted empty is complete again one heartbeat after it is
//! back, with nothing replayed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;

use super::{now_ms, stream_views, Cluster, NodeInfo, NodeView, MAX_WORKERS};

const PREFIX: &str = "deltacast:";
/// Most nodes and streams one view holds (a registry shared with something else cannot make a
/// node read without bound).
const MAX_NODES: isize = 1024;
const MAX_STREAMS: isize = 4096;
/// Bound on one Redis exchange (a Redis that accepts and never answers must not stall us).
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Deletes an origin key only when it still names this node (a publisher that moved to another
/// node made that node the origin: its key must stay), and drops the stream from the index then.
const DEL_IF_OWNER: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    redis.call('DEL', KEYS[1]); redis.call('ZREM', KEYS[2], ARGV[2]); return 1 end return 0";

fn node_key(id: &str) -> String {
    format!("{PREFIX}node:{id}")
}
fn origin_key(stream: &str) -> String {
    format!("{PREFIX}origin:{stream}")
}
fn edges_key(stream: &str) -> String {
    format!("{PREFIX}edges:{stream}")
}
fn upstream_key(stream: &str) -> String {
    format!("{PREFIX}upstream:{stream}")
}
fn nodes_index() -> String {
    format!("{PREFIX}nodes")
}
fn streams_index() -> String {
    format!("{PREFIX}streams")
}

/// What the previous successful heartbeat registered, so the next one can take back what ended.
#[derive(Default)]
struct Registered {
    origins: HashSet<String>,
    edges: HashSet<String>,
}

/// The heartbeat task: every `heartbeat_ms`, write this node's keys and read the view. Runs for
/// the life of the process; Redis errors are logged on each change of state, never fatal.
pub(super) async fn heartbeat(c: Arc<Cluster>, url: String) {
    let client = match redis::Client::open(url.as_str()) {
        Ok(cl) => cl,
        Err(e) => {
            tracing::error!("cluster: bad cluster.redis URL: {e}; running as a single node");
            return;
        }
    };
    let cm_cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(Duration::from_secs(1))
        .set_number_of_retries(2)
        .set_max_delay(1_000);
    let mut reg = Registered::default();
    let mut tick = tokio::time::interval(c.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up: Option<bool> = None;
    let mut last_error = String::new();
    loop {
        tick.tick().await;
        let _writing = c.writing.lock().await;
        if c.leaving.load(Ordering::Acquire) {
            return;
        }
        let conn = c.conn.lock().clone();
        let res = match conn {
            Some(mut m) => match tokio::time::timeout(OP_TIMEOUT, beat(&c, &mut m, &mut reg)).await
            {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("Redis did not answer in time".to_string()),
            },
            None => {
                match tokio::time::timeout(
                    OP_TIMEOUT,
                    ConnectionManager::new_with_config(client.clone(), cm_cfg.clone()),
                )
                .await
                {
                    Ok(Ok(mut m)) => {
                        *c.conn.lock() = Some(m.clone());
                        tokio::time::timeout(OP_TIMEOUT, beat(&c, &mut m, &mut reg))
                            .await
                            .unwrap_or_else(|_| {
                                Err(redis::RedisError::from((
                                    redis::ErrorKind::IoError,
                                    "Redis did not answer in time",
                                )))
                            })
                            .map_err(|e| e.to_string())
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("connecting to Redis timed out".to_string()),
                }
            }
        };
        let up = res.is_ok();
        c.stats.redis_up.store(up, Ordering::Relaxed);
        match res {
            Ok(()) => {
                if was_up != Some(true) {
                    let nodes = c.stats.nodes.load(Ordering::Relaxed);
                    if was_up.is_none() {
                        tracing::info!(node = %c.node_id, nodes, "cluster: registered in Redis");
                    } else {
                        tracing::warn!(node = %c.node_id, nodes, "cluster: Redis is back; re-registered");
                    }
                }
            }
            Err(e) => {
                c.stats.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                if was_up != Some(false) || e != last_error {
                    tracing::error!(
                        node = %c.node_id,
                        "cluster: Redis unreachable ({e}); serving on, placing on the last view \
                         until it ages out, re-registering when Redis returns"
                    );
                }
                last_error = e;
            }
        }
        was_up = Some(up);
    }
}

/// One heartbeat: write this node's keys, take back what ended, read the view.
async fn beat(
    c: &Cluster,
    m: &mut ConnectionManager,
    reg: &mut Registered,
) -> redis::RedisResult<()> {
    let ttl = c.ttl.as_millis() as u64;
    let now = now_ms();
    let info = c.local_info();
    let origins: HashSet<String> = c.origin_streams().into_iter().collect();
    let pulled = c.pulled();
    let edges: HashSet<String> = pulled.iter().map(|(s, _)| s.clone()).collect();
    let json = serde_json::to_string(&info).unwrap_or_default();

    let mut p = redis::pipe();
    p.cmd("SET")
        .arg(node_key(&c.node_id))
        .arg(json)
        .arg("PX")
        .arg(ttl)
        .ignore();
    p.cmd("ZADD")
        .arg(nodes_index())
        .arg(now)
        .arg(&c.node_id)
        .ignore();
    for s in &origins {
        p.cmd("SET")
            .arg(origin_key(s))
            .arg(&c.node_id)
            .arg("PX")
            .arg(ttl)
            .ignore();
        p.cmd("ZADD").arg(streams_index()).arg(now).arg(s).ignore();
    }
    for s in reg.origins.difference(&origins) {
        p.cmd("EVAL")
            .arg(DEL_IF_OWNER)
            .arg(2)
            .arg(origin_key(s))
            .arg(streams_index())
            .arg(&c.node_id)
            .arg(s)
            .ignore();
    }
    for s in &edges {
        p.cmd("ZADD")
            .arg(edges_key(s))
            .arg(now)
            .arg(&c.node_id)
            .ignore();
        p.cmd("PEXPIRE").arg(edges_key(s)).arg(ttl).ignore();
    }
    for (s, url) in &pulled {
        p.cmd("HSET")
            .arg(upstream_key(s))
            .arg(&c.node_id)
            .arg(c.upstream_id(url))
            .ignore();
        p.cmd("PEXPIRE").arg(upstream_key(s)).arg(ttl).ignore();
    }
    for s in reg.edges.difference(&edges) {
        p.cmd("ZREM").arg(edges_key(s)).arg(&c.node_id).ignore();
        p.cmd("HDEL").arg(upstream_key(s)).arg(&c.node_id).ignore();
    }
    let sweep = now.saturating_sub(10 * ttl);
    p.cmd("ZREMRANGEBYSCORE")
        .arg(nodes_index())
        .arg("-inf")
        .arg(sweep)
        .ignore();
    p.cmd("ZREMRANGEBYSCORE")
        .arg(streams_index())
        .arg("-inf")
        .arg(sweep)
        .ignore();
    p.cmd("ZRANGE").arg(nodes_index()).arg(0).arg(MAX_NODES - 1);
    p.cmd("ZRANGE")
        .arg(streams_index())
        .arg(0)
        .arg(MAX_STREAMS - 1);
    let (ids, streams): (Vec<String>, Vec<String>) = p.query_async(m).await?;
    reg.origins = origins;
    reg.edges = edges;

    // The view: each node's document and age, each stream's origin and edges.
    let mut p = redis::pipe();
    for id in &ids {
        p.cmd("GET").arg(node_key(id));
        p.cmd("PTTL").arg(node_key(id));
    }
    let edge_floor = now.saturating_sub(2 * ttl);
    for s in &streams {
        p.cmd("GET").arg(origin_key(s));
        p.cmd("ZRANGEBYSCORE")
            .arg(edges_key(s))
            .arg(edge_floor)
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_NODES);
        p.cmd("HGETALL").arg(upstream_key(s));
    }
    let vals: Vec<Value> = if ids.is_empty() && streams.is_empty() {
        Vec::new()
    } else {
        p.query_async(m).await?
    };
    let mut it = vals.into_iter();
    let mut nodes = Vec::with_capacity(ids.len());
    for id in &ids {
        let (Some(doc), Some(pttl)) = (it.next(), it.next()) else {
            break;
        };
        let doc: Option<String> = redis::from_redis_value(&doc).unwrap_or(None);
        let pttl: i64 = redis::from_redis_value(&pttl).unwrap_or(-2);
        let Some(info) = doc.and_then(|d| parse_node(id, &d)) else {
            continue; // expired since the index listed it: the node is gone
        };
        let last_seen_ms = if pttl >= 0 {
            ttl.saturating_sub(pttl as u64)
        } else {
            0
        };
        nodes.push(NodeView { info, last_seen_ms });
    }
    let mut origin_of = Vec::with_capacity(streams.len());
    let mut edges_of = HashMap::new();
    let mut upstreams_of = HashMap::new();
    for s in &streams {
        let (Some(o), Some(e), Some(u)) = (it.next(), it.next(), it.next()) else {
            break;
        };
        let o: Option<String> = redis::from_redis_value(&o).unwrap_or(None);
        let e: Vec<String> = redis::from_redis_value(&e).unwrap_or_default();
        let mut u: HashMap<String, String> = redis::from_redis_value(&u).unwrap_or_default();
        // Bounded like the edges (a field per live edge; anything larger is not ours).
        u.retain(|k, v| k.len() <= 64 && v.len() <= 512);
        origin_of.push((s.clone(), o));
        edges_of.insert(s.clone(), e);
        upstreams_of.insert(s.clone(), u);
    }
    c.store_view(nodes, stream_views(origin_of, edges_of, upstreams_of));
    Ok(())
}

/// A node document from Redis, checked: it must name the key's node and stay within bounds.
fn parse_node(id: &str, doc: &str) -> Option<NodeInfo> {
    if doc.len() > 64 * 1024 {
        return None;
    }
    let mut info: NodeInfo = serde_json::from_str(doc).ok()?;
    if info.id != id {
        return None;
    }
    info.workers.truncate(MAX_WORKERS);
    info.candidates.truncate(64);
    if !(info.public_http.starts_with("http://") || info.public_http.starts_with("https://")) {
        info.public_http.clear(); // never placed on (see `least_loaded`)
    }
    Some(info)
}

/// Leave the cluster at once (on shutdown): delete this node's key and the origin keys that still
/// name it, so placement stops sending viewers here without waiting for the TTL. Bounded; a Redis
/// that is away just lets the keys expire.
pub(super) async fn leave(c: &Cluster) {
    c.leaving.store(true, Ordering::Release);
    // Wait out a heartbeat in flight (bounded by its own timeouts), so none writes after this.
    let Ok(_writing) = tokio::time::timeout(OP_TIMEOUT, c.writing.lock()).await else {
        return;
    };
    let Some(mut m) = c.conn.lock().clone() else {
        return;
    };
    let mut p = redis::pipe();
    p.cmd("DEL").arg(node_key(&c.node_id)).ignore();
    p.cmd("ZREM").arg(nodes_index()).arg(&c.node_id).ignore();
    for s in c.origin_streams() {
        p.cmd("EVAL")
            .arg(DEL_IF_OWNER)
            .arg(2)
            .arg(origin_key(&s))
            .arg(streams_index())
            .arg(&c.node_id)
            .arg(&s)
            .ignore();
    }
    for (s, _) in c.pulled() {
        p.cmd("ZREM").arg(edges_key(&s)).arg(&c.node_id).ignore();
        p.cmd("HDEL").arg(upstream_key(&s)).arg(&c.node_id).ignore();
    }
    match tokio::time::timeout(Duration::from_secs(1), p.query_async::<()>(&mut m)).await {
        Ok(Ok(())) => tracing::info!(node = %c.node_id, "cluster: left"),
        _ => tracing::warn!(node = %c.node_id, "cluster: could not deregister; keys expire"),
    }
}

/// The origin of `stream` as Redis says now (None when unknown or Redis is away).
pub(super) async fn origin_now(c: &Cluster, stream: &str) -> Option<NodeInfo> {
    let mut m = c.conn.lock().clone()?;
    let fut = async {
        let id: Option<String> = redis::cmd("GET")
            .arg(origin_key(stream))
            .query_async(&mut m)
            .await
            .ok()?;
        let id = id?;
        let doc: Option<String> = redis::cmd("GET")
            .arg(node_key(&id))
            .query_async(&mut m)
            .await
            .ok()?;
        parse_node(&id, &doc?)
    };
    tokio::time::timeout(Duration::from_secs(1), fut)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_documents_are_checked() {
        let good = r#"{"id":"a","public_http":"http://10.0.0.5:8080","candidates":[],"capacity":10,
            "viewers":1,"workers":[],"busy_pct":0.0,"load":0.1,"room":true,"webrtc":true}"#;
        assert_eq!(parse_node("a", good).unwrap().capacity, 10);
        assert!(
            parse_node("b", good).is_none(),
            "a document under another node's key"
        );
        assert!(parse_node("a", "{").is_none());
        let bad_url = good.replace("http://10.0.0.5:8080", "javascript:x");
        assert_eq!(parse_node("a", &bad_url).unwrap().public_http, "");
    }
}
