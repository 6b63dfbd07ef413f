//! The `deltacast` binary: CLI parsing, logging, then `app::run` (or `check-config`, `doctor`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use deltacast::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "deltacast",
    version,
    about = "Live media relay: RTMP in; LL-HLS (and more) out"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the relay.
    Serve(ServeArgs),
    /// Check a config file and print the effective configuration.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Compare this node with tuning/'s advice (sysctls, descriptors, CPU governor, IRQ/RPS
    /// spread, UDP GSO/GRO, io_uring, cores against sfu.workers) for the config it will run.
    /// Exit 0 when nothing differs, 1 otherwise.
    Doctor {
        /// The config the node runs (default: the built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; every key has a default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Publish the built-in looping demo program (stream `demo`).
    #[arg(long)]
    demo: bool,
    /// HTTP listen address (server.http_listen).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// RTMP listen address (rtmp.listen).
    #[arg(long)]
    rtmp: Option<SocketAddr>,
    /// Admin token for mutating API calls (server.admin_token).
    #[arg(long)]
    admin_token: Option<String>,
    /// LL-HLS part target in milliseconds (hls.part_target_ms).
    #[arg(long)]
    part_target_ms: Option<u64>,
    /// Segment target in milliseconds (hls.segment_target_ms).
    #[arg(long)]
    segment_target_ms: Option<u64>,
    /// Segments listed in the playlist (hls.window_segments).
    #[arg(long)]
    window_segments: Option<usize>,
    /// WebRTC UDP driver: auto (io_uring, else epoll), uring or epoll (sfu.io).
    #[arg(long)]
    sfu_io: Option<String>,
    /// WebRTC UDP GSO: on or off (sfu.gso).
    #[arg(long, value_parser = on_off)]
    sfu_gso: Option<bool>,
    /// Disable the WebRTC SFU (sfu.enabled = false).
    #[arg(long)]
    no_sfu: bool,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}': expected on or off")),
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DELTACAST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => {
            match Config::load(&config).and_then(|c| deltacast::app::check_config(&c).map(|()| c)) {
                Ok(c) => print!("{}", toml::to_string_pretty(&c).unwrap_or_default()),
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
            }
        }
        Cmd::Doctor { config } => match load(config.as_ref()) {
            Ok(c) => std::process::exit(deltacast::doctor::run(&c)),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        Cmd::Serve(a) => {
            let mut cfg = match load(a.config.as_ref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
            };
            if a.demo {
                cfg.demo.enabled = true;
            }
            if let Some(v) = a.http {
                cfg.server.http_listen = v;
            }
            if let Some(v) = a.rtmp {
                cfg.rtmp.listen = v;
            }
            if let Some(v) = a.admin_token {
                cfg.server.admin_token = v;
            }
            if let Some(v) = a.part_target_ms {
                cfg.hls.part_target_ms = v;
            }
            if let Some(v) = a.segment_target_ms {
                cfg.hls.segment_target_ms = v;
            }
            if let Some(v) = a.window_segments {
                cfg.hls.window_segments = v;
            }
            if let Some(v) = a.sfu_io {
                cfg.sfu.io = v;
            }
            if let Some(v) = a.sfu_gso {
                cfg.sfu.gso = v;
            }
            if a.no_sfu {
                cfg.sfu.enabled = false;
            }
            if let Err(e) = deltacast::app::check_config(&cfg) {
                eprintln!("{e}");
                std::process::exit(2);
            }
            if let Err(e) = deltacast::app::run(cfg) {
                eprintln!("deltacast: {e:#}");
                std::process::exit(1);
            }
        }
    }
}
