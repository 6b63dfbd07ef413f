//! Wiring: builds the registry, starts the engines on their threads and the control-plane runtime,
//! binds the listeners, and runs until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::egress::hls::packager;
use crate::egress::hls::segmenter::SegmenterConfig;
use crate::egress::hls::store::{HlsStore, StoreConfig};
use crate::http::{self, AppState};
use crate::media::Registry;
use crate::metrics::Metrics;

/// Capacity of the HLS packager's event queue (frames of all streams).
const HLS_SINK_CAPACITY: usize = 8192;

/// Raise the soft open-files limit to the hard limit: every viewer and held request is a socket.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let want = r.rlim_max;
            r.rlim_cur = want;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                tracing::warn!("could not raise the open-files limit");
            }
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            tracing::info!(limit = r.rlim_cur, "open-files limit");
        }
    }
}

/// Every check of a config: the plain values (`Config::validate`), then the parts only their
/// own modules can judge (push URLs, provider settings). Errors name the key.
pub fn check_config(cfg: &Config) -> Result<(), String> {
    cfg.validate()?;
    if cfg.demo.enabled && !cfg.demo.file.is_empty() {
        crate::ingest::demo::Program::load(&cfg.demo.file)
            .map_err(|e| format!("demo.file: {e}"))?;
    }
    crate::provider::check_config(cfg)?;
    crate::egress::push::check_config(&cfg.destinations)
}

pub fn run(cfg: Config) -> anyhow::Result<()> {
    raise_fd_limit();
    let cfg = Arc::new(cfg);
    if cfg.open_mode() {
        tracing::warn!(
            "no [[streams]] configured: running open, any RTMP key publishes a stream of that name"
        );
    }
    // Read and checked before anything listens: a bad `[demo] file` stops the start.
    let demo = cfg
        .demo
        .enabled
        .then(|| crate::ingest::demo::Program::load(&cfg.demo.file))
        .transpose()
        .map_err(|e| anyhow::anyhow!("demo.file: {e}"))?;
    let registry = Registry::new();
    let metrics = Arc::new(Metrics::default());
    let seg_cfg = SegmenterConfig::from_ms(cfg.hls.part_target_ms, cfg.hls.segment_target_ms);
    let store = HlsStore::new(StoreConfig {
        part_target_secs: seg_cfg.part_target_secs(),
        segment_target_secs: cfg.hls.segment_target_ms as f64 / 1000.0,
        window_segments: cfg.hls.window_segments,
        retain_segments: cfg.hls.retain_segments,
    });
    let rx = registry.add_sink("hls", HLS_SINK_CAPACITY);
    let pin = (cfg.hls.packager_core >= 0).then_some(cfg.hls.packager_core as usize);
    packager::spawn(rx, store.clone(), seg_cfg, pin, metrics.packager.clone())
        .context("starting the HLS packager thread")?;

    let push = crate::egress::push::PushEngine::start(
        registry.clone(),
        &cfg.destinations,
        crate::egress::push::PushOptions::default(),
    )
    .context("starting the RTMP push engine")?;

    // WebRTC SFU (WHEP). A node whose UDP ports are taken still serves HLS and RTMP: WHEP then
    // answers 503.
    let sfu = if cfg.sfu.enabled {
        match crate::egress::sfu::SfuHandle::start(&cfg.sfu, registry.clone()) {
            Ok(h) => {
                tracing::info!(
                    workers = h.workers.len(),
                    driver = h.driver().as_str(),
                    "WebRTC SFU running"
                );
                Some(h)
            }
            Err(e) => {
                tracing::error!("WebRTC SFU not started: {e:#}; WHEP playback disabled");
                None
            }
        }
    } else {
        None
    };

    let providers = Arc::new(
        crate::provider::ProviderRegistry::new(&cfg, Some(Arc::new(push.clone())))
            .map_err(anyhow::Error::msg)
            .context("setting up the streams' providers")?,
    );

    let cluster = crate::cluster::Cluster::new(&cfg, registry.clone(), sfu.clone());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.server.http_threads.max(1))
        .thread_name("control")
        .enable_all()
        .build()
        .context("starting the control-plane runtime")?;

    rt.block_on(async move {
        let http_listener = tokio::net::TcpListener::bind(cfg.server.http_listen)
            .await
            .with_context(|| format!("binding HTTP on {}", cfg.server.http_listen))?;
        let rtmp_listener = tokio::net::TcpListener::bind(cfg.rtmp.listen)
            .await
            .with_context(|| format!("binding RTMP on {}", cfg.rtmp.listen))?;
        tracing::info!(
            http = %http_listener.local_addr()?,
            rtmp = %rtmp_listener.local_addr()?,
            "deltacast listening"
        );
        tokio::spawn(crate::ingest::rtmp::serve(
            rtmp_listener,
            registry.clone(),
            cfg.clone(),
            metrics.clone(),
        ));
        cluster.start();
        if let Some(program) = demo {
            tracing::info!(stream = %cfg.demo.name, file = %cfg.demo.file,
                lap_ms = program.loop_ms, "publishing the demo program");
            tokio::spawn(crate::ingest::demo::run(
                registry.clone(),
                cfg.demo.name.clone(),
                program,
            ));
        }
        // Edge pulls: `[[streams]] pull` streams through the static resolver (the cluster sets
        // its own resolver).
        let pulls = crate::ingest::whep_pull::PullManager::new(
            if cluster.enabled {
                cluster.node_id.clone()
            } else {
                node_id(&cfg)
            },
            registry.clone(),
            sfu.clone(),
            crate::ingest::whep_pull::PullTiming {
                linger: std::time::Duration::from_millis(cfg.pull.linger_ms),
                connect: std::time::Duration::from_millis(cfg.pull.connect_timeout_ms),
            },
        );
        let configured: Arc<dyn crate::ingest::whep_pull::OriginResolver> =
            Arc::new(crate::ingest::whep_pull::StaticResolver::from_config(&cfg));
        if cluster.enabled {
            pulls.set_resolver(Arc::new(crate::cluster::pull::FirstOf(vec![
                configured,
                cluster.resolver(),
            ])));
            let p = pulls.clone();
            cluster.set_pulls(Arc::new(move || p.active()));
        } else {
            pulls.set_resolver(configured);
        }
        let state = AppState {
            pulls: pulls.clone(),
            cfg: cfg.clone(),
            registry: registry.clone(),
            hls: store.clone(),
            metrics: metrics.clone(),
            push: push.clone(),
            sfu: sfu.clone(),
            providers: providers.clone(),
            cluster: cluster.clone(),
        };
        let server = tokio::spawn(http::serve(http_listener, state));
        tokio::select! {
            r = server => {
                r.context("HTTP server task")?.context("HTTP server")?;
            }
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                pulls.stop_all();
                cluster.leave().await;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// This node's id for pull loop detection (`Deltacast-Via`): the host name and the HTTP port,
/// so that nodes sharing a host stay apart.
fn node_id(cfg: &crate::config::Config) -> String {
    format!(
        "{}:{}",
        crate::cluster::hostname(),
        cfg.server.http_listen.port()
    )
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
