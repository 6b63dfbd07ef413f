//! `deltacast-load`: one load tool for deltacast (or any WHEP / LL-HLS server), in the manner
//! of LiveKit's `lk load-test` and SRS's `srs-bench`: mixed viewer kinds in one run, a live line
//! a second, JSON results, a verdict as exit status; `merge` for runs driven from several
//! machines and `plot` for the pictures.
//!
//! Modules: [`run`] (the run loop, progress, results), [`webrtc`] (WHEP viewers, fast and full),
//! [`hls`] (LL-HLS viewers as hls.js), [`rtp`] (sequence accounting), [`report`] (results file,
//! merge, verdict), [`plot`], [`procstat`] (relay and own CPU/RSS), [`live`] (shared counters),
//! [`url`] (targets and redirect resolution).

mod hls;
mod janus;
mod live;
mod plot;
mod procstat;
mod report;
mod rtp;
mod run;
mod url;
mod webrtc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "deltacast-load", version, about = "Mixed WebRTC (WHEP) and LL-HLS viewer load with live progress, JSON results, merge and plots", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a load: WebRTC and LL-HLS viewers together; exit 1 when the pass criteria fail.
    Run(Box<run::RunArgs>),
    /// Combine result files of several load machines (counts summed per wall-clock second).
    Merge {
        /// Result files (`run --json`).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output file.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Plot a result file: joined viewers, loss, late parts, server CPU and RSS over time, and
    /// first-frame / first-part CDFs.
    Plot {
        result: PathBuf,
        /// Output directory (created).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "svg")]
        format: plot::Format,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run::run(*a),
        Cmd::Merge { inputs, out } => {
            let mut rs = Vec::new();
            for p in &inputs {
                let r = std::fs::read(p).map_err(|e| e.to_string()).and_then(|b| {
                    serde_json::from_slice::<report::Results>(&b).map_err(|e| e.to_string())
                });
                match r {
                    Ok(r) => rs.push((p.display().to_string(), r)),
                    Err(e) => {
                        eprintln!("deltacast-load merge: {}: {e}", p.display());
                        return ExitCode::from(2);
                    }
                }
            }
            match report::merge(&rs) {
                Ok(m) => {
                    if let Err(e) = std::fs::write(&out, serde_json::to_vec_pretty(&m).unwrap()) {
                        eprintln!("deltacast-load merge: {}: {e}", out.display());
                        return ExitCode::from(2);
                    }
                    run::print_summary(&m);
                    if m.verdict.passed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("deltacast-load {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Plot {
            result,
            out,
            format,
        } => {
            let r = std::fs::read(&result)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<report::Results>(&b).map_err(|e| e.to_string())
                })
                .and_then(|r| plot::plot(&r, &out, format));
            match r {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("deltacast-load plot: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
