//! `deltacast doctor`: compares this node with tuning/'s advice and prints one finding per
//! setting (ok, differs, or not exposed), the value found, the value advised and why it matters.
//! Exit status 0 when nothing differs, 1 otherwise.
//!
//! The sysctl advice is `tuning/sysctl-deltacast.conf`, compiled in and parsed here
//! ([`parse_advice`]): no advised sysctl value is written in Rust. The other checks compare the
//! node with the config it will run (`--config`): socket buffers against `[sfu]
//! socket_*_buffer`, descriptors against the connection caps, cores against `sfu.workers`, and
//! the SFU drivers' own probes (UDP GSO, io_uring: the same calls the workers make at start).
//!
//! Files are read below a root ([`Node`]: `/` on a node, a fake tree in tests); what is not a
//! file (rlimits, affinity, socket options, io_uring) is gathered once into [`Probes`]. A file
//! the node does not expose (a VM without cpufreq, a kernel without the sysctl) is reported as
//! "not exposed" and does not fail the check.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::{Config, Workers};

/// The sysctl advice: `tuning/sysctl-deltacast.conf`.
pub const SYSCTL_ADVICE: &str = include_str!("../tuning/sysctl-deltacast.conf");

/// The CPU frequency governor tuning/README.md advises.
const GOVERNOR: &str = "performance";

/// Descriptors the process needs beyond its connection caps: listeners, UDP sockets, eventfds,
/// rings, log and asset files, push destinations.
const FD_HEADROOM: u64 = 1_024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Differs,
    /// Not exposed by this node, or not used by this config: reported, never a failure.
    NotExposed,
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub status: Status,
    pub name: String,
    pub found: String,
    pub advised: String,
    pub why: String,
}

/// How a node's value is held against the advised one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    AtLeast,
    AtMost,
    Exactly,
}

impl Cmp {
    fn words(self) -> &'static str {
        match self {
            Cmp::AtLeast => "at least",
            Cmp::AtMost => "at most",
            Cmp::Exactly => "exactly",
        }
    }
}

/// One line of the sysctl advice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysctlAdvice {
    pub key: String,
    pub value: String,
    pub cmp: Cmp,
    pub why: String,
}

impl SysctlAdvice {
    /// Where the kernel exposes the key below the root.
    fn proc_path(&self) -> String {
        format!("proc/sys/{}", self.key.replace('.', "/"))
    }

    fn advised(&self) -> String {
        format!("{} {}", self.cmp.words(), self.value)
    }

    /// Whether `found` meets the advice. Numbers compare field by field (`a b` ranges too).
    fn met_by(&self, found: &str) -> bool {
        let fields = |s: &str| -> Option<Vec<u64>> {
            s.split_whitespace().map(|f| f.parse().ok()).collect()
        };
        let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        match (self.cmp, fields(found), fields(&self.value)) {
            (Cmp::Exactly, _, _) => norm(found) == norm(&self.value),
            (cmp, Some(f), Some(a)) if f.len() == a.len() => {
                f.iter().zip(&a).all(|(f, a)| match cmp {
                    Cmp::AtLeast => f >= a,
                    _ => f <= a,
                })
            }
            _ => false,
        }
    }
}

/// Parse a sysctl.d file whose every key is preceded by a `# at least|at most|exactly: why`
/// comment. A key without one is an error: the advice must say how it compares and why.
pub fn parse_advice(text: &str) -> Result<Vec<SysctlAdvice>, String> {
    let mut out = Vec::new();
    let mut pending: Option<(Cmp, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix('#') {
            let c = c.trim();
            pending = [
                ("at least:", Cmp::AtLeast),
                ("at most:", Cmp::AtMost),
                ("exactly:", Cmp::Exactly),
            ]
            .iter()
            .find_map(|(p, cmp)| c.strip_prefix(p).map(|why| (*cmp, why.trim().to_string())))
            .or(pending);
            continue;
        }
        if line.is_empty() {
            pending = None;
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("sysctl advice line {}: expected key = value", n + 1))?;
        let (cmp, why) = pending.take().ok_or_else(|| {
            format!(
                "sysctl advice line {}: {} has no '# at least|at most|exactly: why' comment above it",
                n + 1,
                key.trim()
            )
        })?;
        out.push(SysctlAdvice {
            key: key.trim().to_string(),
            value: value.trim().to_string(),
            cmp,
            why,
        });
    }
    Ok(out)
}

/// The node's files, read below `root` (`/`, or a fake tree in tests).
pub struct Node {
    root: PathBuf,
}

impl Node {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A file's contents, trimmed; `None` when it is absent or unreadable.
    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The entry names of a directory, sorted; empty when it is absent.
    fn list(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path(rel))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|s| natural(s));
        v
    }

    /// The last component of a symlink's target (`/sys/class/net/eth0/device` → `0000:3b:00.0`).
    fn link_name(&self, rel: &str) -> Option<String> {
        let t = std::fs::read_link(self.path(rel)).ok()?;
        Some(Path::new(&t).file_name()?.to_string_lossy().into_owned())
    }
}

/// Sort key that puts `cpu2` before `cpu10`.
fn natural(s: &str) -> (String, u64) {
    let digits = s.trim_start_matches(|c: char| !c.is_ascii_digit());
    let head = &s[..s.len() - digits.len()];
    (head.to_string(), digits.parse().unwrap_or(0))
}

/// What is not read from a file: gathered once by [`Probes::live`]; set by hand in tests.
#[derive(Clone, Debug)]
pub struct Probes {
    /// RLIMIT_NOFILE (soft, hard) of this process.
    pub nofile: Option<(u64, u64)>,
    /// Cores this process may use.
    pub cores: usize,
    /// UDP GSO (`UDP_SEGMENT`), as the drivers check it.
    pub gso: bool,
    /// UDP GRO (`UDP_GRO` setsockopt).
    pub gro: bool,
    /// The io_uring driver's set-up, as `sfu.io = "auto"` tries it.
    pub uring: Result<(), String>,
}

impl Probes {
    pub fn live() -> Self {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into `rl`.
        let nofile = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0)
            .then_some((rl.rlim_cur, rl.rlim_max));
        let sock = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).ok();
        Self {
            nofile,
            cores: crate::affinity::usable_cores(),
            gso: sock.as_ref().is_some_and(crate::io::gso_supported),
            gro: sock.as_ref().is_some_and(crate::io::gro_supported),
            uring: crate::io::uring_available().map_err(|e| e.to_string()),
        }
    }
}

/// Descriptors the config may hold open at once: every HTTP and RTMP connection it admits, the
/// ICE-TCP connections of every worker, plus [`FD_HEADROOM`].
pub fn fds_needed(cfg: &Config, cores: usize) -> u64 {
    let mut n = cfg.server.max_connections as u64 + cfg.rtmp.max_connections as u64;
    if cfg.sfu.enabled && cfg.sfu.ice_tcp_port_base != 0 {
        n += (cfg.sfu.workers.resolve(cores) * cfg.sfu.ice_tcp_max_connections) as u64;
    }
    n + cfg.destinations.len() as u64 + FD_HEADROOM
}

fn finding(status: Status, name: &str, found: String, advised: String, why: &str) -> Finding {
    Finding {
        status,
        name: name.to_string(),
        found,
        advised,
        why: why.to_string(),
    }
}

fn ok_if(cond: bool) -> Status {
    if cond {
        Status::Ok
    } else {
        Status::Differs
    }
}

/// Every finding for this node, config and advice.
pub fn check(node: &Node, probes: &Probes, cfg: &Config, advice: &[SysctlAdvice]) -> Vec<Finding> {
    let mut out = Vec::new();
    let sysctl =
        |key: &str| -> Option<String> { node.read(&format!("proc/sys/{}", key.replace('.', "/"))) };
    let num = |key: &str| -> Option<u64> { sysctl(key)?.parse().ok() };

    for a in advice {
        out.push(match node.read(&a.proc_path()) {
            Some(found) => {
                // `ip_local_port_range` reads "1024\t65535".
                let found = found.split_whitespace().collect::<Vec<_>>().join(" ");
                finding(ok_if(a.met_by(&found)), &a.key, found, a.advised(), &a.why)
            }
            None => finding(
                Status::NotExposed,
                &a.key,
                "not exposed".into(),
                a.advised(),
                &a.why,
            ),
        });
    }

    // The buffers this config asks for, against the kernel's caps.
    if cfg.sfu.enabled {
        for (key, cfg_key, asked) in [
            (
                "net.core.rmem_max",
                "socket_recv_buffer",
                cfg.sfu.socket_recv_buffer,
            ),
            (
                "net.core.wmem_max",
                "socket_send_buffer",
                cfg.sfu.socket_send_buffer,
            ),
        ] {
            let name = format!("{key} vs sfu.{cfg_key}");
            let why = "the kernel caps each SFU worker's socket buffer here without an error; \
                       a burst beyond it is dropped";
            out.push(match num(key) {
                Some(f) => finding(
                    ok_if(f >= asked as u64),
                    &name,
                    f.to_string(),
                    format!("at least {asked}"),
                    why,
                ),
                None => finding(
                    Status::NotExposed,
                    &name,
                    "not exposed".into(),
                    format!("at least {asked}"),
                    why,
                ),
            });
        }
    }

    // Descriptors against the connection caps.
    let need = fds_needed(cfg, probes.cores);
    let fd_why = "every HTTP/HLS connection, RTMP publisher and ICE-TCP viewer the config admits \
                  holds a descriptor; past the limit accept() fails";
    out.push(match num("fs.file-max") {
        Some(f) => finding(
            ok_if(f >= need),
            "fs.file-max vs connection caps",
            f.to_string(),
            format!("at least {need}"),
            fd_why,
        ),
        None => finding(
            Status::NotExposed,
            "fs.file-max vs connection caps",
            "not exposed".into(),
            format!("at least {need}"),
            fd_why,
        ),
    });
    out.push(match probes.nofile {
        Some((soft, hard)) => finding(
            ok_if(hard >= need),
            "RLIMIT_NOFILE (hard) vs connection caps",
            format!("{hard} (soft {soft}; deltacast raises soft to hard at start)"),
            format!("at least {need} (LimitNOFILE= in deltacast.service)"),
            "this process's limit: run doctor as the service runs (same user, same unit limits)",
        ),
        None => finding(
            Status::NotExposed,
            "RLIMIT_NOFILE (hard) vs connection caps",
            "not exposed".into(),
            format!("at least {need}"),
            fd_why,
        ),
    });

    out.push(governor(node));
    out.extend(irq_spread(node, probes.cores));

    // UDP offloads, as the drivers probe them.
    out.push(if probes.gso {
        finding(
            Status::Ok,
            "UDP GSO (UDP_SEGMENT)",
            "supported".into(),
            "supported".into(),
            "a frame's packets to one viewer go through the UDP stack once, as one send",
        )
    } else {
        finding(
            if cfg.sfu.gso {
                Status::Differs
            } else {
                Status::NotExposed
            },
            "UDP GSO (UDP_SEGMENT)",
            "not supported".into(),
            "supported (Linux 4.18+)".into(),
            "without it every packet to every viewer takes its own trip through the UDP stack",
        )
    });
    out.push(finding(
        if probes.gro { Status::Ok } else { Status::NotExposed },
        "UDP GRO (UDP_GRO)",
        if probes.gro { "supported" } else { "not supported" }.into(),
        "supported (Linux 5.0+)".into(),
        "lets a receive-heavy node (a load generator) take a run of datagrams in one read; the relay does not need it",
    ));

    // io_uring: the driver's own probe, and the sysctl that turns it off.
    let wants_uring = cfg.sfu.enabled && cfg.sfu.io == "uring";
    let uring_why = match cfg.sfu.io.as_str() {
        "uring" => "sfu.io = \"uring\": the SFU workers do not start without it",
        "auto" => "sfu.io = \"auto\" falls back to epoll without it (logged)",
        _ => "sfu.io = \"epoll\" does not use it (epoll measured faster, docs/BENCHMARKS.md)",
    };
    out.push(match &probes.uring {
        Ok(()) => finding(
            Status::Ok,
            "io_uring",
            "available".into(),
            "available".into(),
            uring_why,
        ),
        Err(e) => finding(
            if wants_uring {
                Status::Differs
            } else {
                Status::NotExposed
            },
            "io_uring",
            format!("unavailable: {e}"),
            "available (Linux 5.11+)".into(),
            uring_why,
        ),
    });
    out.push(match sysctl("kernel.io_uring_disabled") {
        Some(v) => finding(
            if v == "0" {
                Status::Ok
            } else if wants_uring {
                Status::Differs
            } else {
                Status::NotExposed
            },
            "kernel.io_uring_disabled",
            v,
            "0".into(),
            uring_why,
        ),
        None => finding(
            Status::NotExposed,
            "kernel.io_uring_disabled",
            "not exposed (kernel before 6.6)".into(),
            "0".into(),
            uring_why,
        ),
    });

    out.push(workers(cfg, probes.cores));
    out
}

fn governor(node: &Node) -> Finding {
    let why = "a power-saving governor clocks the cores down between bursts, so every keyframe \
               fan-out starts slow and the workers' busy share (admission) reads high";
    let mut found: Vec<(String, String)> = Vec::new();
    for cpu in node.list("sys/devices/system/cpu") {
        let is_cpu = cpu
            .strip_prefix("cpu")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_cpu {
            continue;
        }
        if let Some(g) = node.read(&format!(
            "sys/devices/system/cpu/{cpu}/cpufreq/scaling_governor"
        )) {
            found.push((cpu, g));
        }
    }
    if found.is_empty() {
        return finding(
            Status::NotExposed,
            "CPU frequency governor",
            "not exposed (no cpufreq: a VM or a fixed clock)".into(),
            GOVERNOR.into(),
            why,
        );
    }
    let off: Vec<String> = found
        .iter()
        .filter(|(_, g)| g != GOVERNOR)
        .map(|(c, g)| format!("{c}={g}"))
        .collect();
    let shown = if off.is_empty() {
        format!("{GOVERNOR} on all {} cpus", found.len())
    } else {
        off.join(" ")
    };
    finding(
        ok_if(off.is_empty()),
        "CPU frequency governor",
        shown,
        GOVERNOR.into(),
        why,
    )
}

/// Per physical NIC (one with a `device` link): do its receive interrupts, or RPS, reach more
/// than one core?
fn irq_spread(node: &Node, cores: usize) -> Vec<Finding> {
    let why = "one core taking every packet's interrupt and softirq caps the node below what the \
               SFU workers could serve; multi-queue NICs need their IRQs spread (irqbalance or \
               smp_affinity), single-queue ones RPS (queues/rx-*/rps_cpus)";
    let interrupts = node.read("proc/interrupts").unwrap_or_default();
    let mut lines = interrupts.lines();
    let ncpu = lines.next().map_or(0, |h| {
        h.split_whitespace()
            .filter(|c| c.starts_with("CPU"))
            .count()
    });
    let rows: Vec<&str> = lines.collect();
    let mut out = Vec::new();
    for dev in node.list("sys/class/net") {
        let base = format!("sys/class/net/{dev}");
        if dev == "lo" || std::fs::symlink_metadata(node.path(&format!("{base}/device"))).is_err() {
            continue; // loopback and virtual devices (bridges, veth, tunnels)
        }
        let bus_name = node.link_name(&format!("{base}/device"));
        let rx: Vec<String> = node
            .list(&format!("{base}/queues"))
            .into_iter()
            .filter(|q| q.starts_with("rx-"))
            .collect();
        let rps_on = rx.iter().any(|q| {
            node.read(&format!("{base}/queues/{q}/rps_cpus"))
                .is_some_and(|m| m.chars().any(|c| c.is_ascii_hexdigit() && c != '0'))
        });
        // CPUs that took any of this NIC's interrupts.
        let mut per_cpu = vec![0u64; ncpu];
        for row in &rows {
            let label = row.split_whitespace().last().unwrap_or("");
            let ours = row.contains(dev.as_str())
                || bus_name.as_deref().is_some_and(|b| label.contains(b));
            if !ours {
                continue;
            }
            let counts = row.split_whitespace().skip(1).take(ncpu);
            for (i, c) in counts.enumerate() {
                per_cpu[i] += c.parse::<u64>().unwrap_or(0);
            }
        }
        let irq_cpus: Vec<usize> = (0..ncpu).filter(|&i| per_cpu[i] > 0).collect();
        let found = format!(
            "{} rx queue(s), interrupts on {} cpu(s){}, RPS {}",
            rx.len(),
            irq_cpus.len(),
            if irq_cpus.len() == 1 {
                format!(" (cpu{})", irq_cpus[0])
            } else {
                String::new()
            },
            if rps_on { "on" } else { "off" }
        );
        let name = format!("IRQ/RPS spread {dev}");
        let advised = "receive work on 2+ cores".to_string();
        // One receive queue is one interrupt, taken by one core at a time wherever it moved
        // before: only RPS spreads it. Several queues spread by themselves when their
        // interrupts go to several cores.
        let status = if cores <= 1 || rps_on {
            Status::Ok
        } else if rx.len() < 2 {
            Status::Differs
        } else if irq_cpus.len() >= 2 {
            Status::Ok
        } else if irq_cpus.is_empty() {
            Status::NotExposed // its interrupts are not named after it in /proc/interrupts
        } else {
            Status::Differs
        };
        out.push(finding(status, &name, found, advised, why));
    }
    if out.is_empty() {
        out.push(finding(
            Status::NotExposed,
            "IRQ/RPS spread",
            "no physical NIC exposed".into(),
            "receive work on 2+ cores".into(),
            why,
        ));
    }
    out
}

fn workers(cfg: &Config, cores: usize) -> Finding {
    let auto = Workers::Auto.resolve(cores);
    let name = "sfu.workers vs cores";
    let advised = format!("\"auto\" = {auto} on {cores} usable core(s)");
    if !cfg.sfu.enabled {
        return finding(
            Status::NotExposed,
            name,
            "SFU disabled".into(),
            advised,
            "no WebRTC workers run",
        );
    }
    let n = cfg.sfu.workers.resolve(cores);
    let shown = match cfg.sfu.workers {
        Workers::Auto => format!("\"auto\" = {n}"),
        Workers::Count(_) => n.to_string(),
    };
    let why = if n > auto {
        "more workers than the cores left to them: they preempt each other and the LL-HLS packager"
    } else if n < auto {
        "cores left idle: each worker serves its viewers one after another on one core"
    } else {
        "one worker per core, one core left to the LL-HLS packager, RTMP push and HTTP"
    };
    finding(ok_if(n == auto), name, shown, advised, why)
}

/// 0 when nothing differs, 1 otherwise.
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.status == Status::Differs))
}

/// The report: one block per finding, then a summary line.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.status {
            Status::Ok => "ok",
            Status::Differs => "DIFFERS",
            Status::NotExposed => "n/a",
        };
        let _ = writeln!(
            s,
            "{tag:<8} {}: found {}; advised {}",
            f.name, f.found, f.advised
        );
        let _ = writeln!(s, "{:<8} {}", "", f.why);
    }
    let count = |st| findings.iter().filter(|f| f.status == st).count();
    let _ = writeln!(
        s,
        "\n{} ok, {} differ, {} not exposed or not used (advice: tuning/sysctl-deltacast.conf, tuning/README.md)",
        count(Status::Ok),
        count(Status::Differs),
        count(Status::NotExposed)
    );
    s
}

/// `deltacast doctor` on this node: prints the report, returns the exit status.
pub fn run(cfg: &Config) -> i32 {
    let advice = match parse_advice(SYSCTL_ADVICE) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("deltacast doctor: {e}");
            return 2;
        }
    };
    let findings = check(&Node::new("/"), &Probes::live(), cfg, &advice);
    print!("{}", render(&findings));
    exit_code(&findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advice() -> Vec<SysctlAdvice> {
        parse_advice(SYSCTL_ADVICE).unwrap()
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{text}\n")).unwrap();
    }

    /// A 4-core node set up as tuning/ advises: every advised sysctl at its value, performance
    /// governor, a two-queue NIC whose interrupts land on two cores.
    fn tuned_node() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for a in advice() {
            write(r, &a.proc_path(), &a.value);
        }
        write(r, "proc/sys/kernel/io_uring_disabled", "0");
        for c in 0..4 {
            write(
                r,
                &format!("sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"),
                GOVERNOR,
            );
        }
        write(r, "sys/devices/system/cpu/online", "0-3");
        let net = r.join("sys/class/net/eth0");
        std::fs::create_dir_all(&net).unwrap();
        std::os::unix::fs::symlink(
            "../../../devices/pci0000:00/0000:00:03.0",
            net.join("device"),
        )
        .unwrap();
        for q in ["rx-0", "rx-1", "tx-0", "tx-1"] {
            write(r, &format!("sys/class/net/eth0/queues/{q}/rps_cpus"), "0");
        }
        // A virtual device (no `device` link) is not judged.
        write(r, "sys/class/net/docker0/queues/rx-0/rps_cpus", "0");
        write(
            r,
            "proc/interrupts",
            "           CPU0       CPU1       CPU2       CPU3\n\
             \x20 0:         20          0          0          0   IO-APIC   2-edge      timer\n\
             \x2024:     123456          0          0          0   PCI-MSI 49152-edge      eth0-TxRx-0\n\
             \x2025:          0     654321          0          0   PCI-MSI 49153-edge      eth0-TxRx-1\n\
             NMI:          0          0          0          0   Non-maskable interrupts",
        );
        dir
    }

    fn probes() -> Probes {
        Probes {
            nofile: Some((1_024, 1_048_576)),
            cores: 4,
            gso: true,
            gro: true,
            uring: Ok(()),
        }
    }

    fn run_on(root: &Path, p: &Probes, cfg: &Config) -> Vec<Finding> {
        check(&Node::new(root), p, cfg, &advice())
    }

    fn differing(f: &[Finding]) -> Vec<&str> {
        f.iter()
            .filter(|f| f.status == Status::Differs)
            .map(|f| f.name.as_str())
            .collect()
    }

    #[test]
    fn shipped_advice_parses_with_a_reason_for_every_key() {
        let a = advice();
        let keys: Vec<&str> = a.iter().map(|a| a.key.as_str()).collect();
        for k in [
            "net.core.rmem_max",
            "net.core.wmem_max",
            "net.core.rmem_default",
            "net.core.netdev_max_backlog",
            "fs.file-max",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(a.iter().all(|a| !a.why.is_empty() && !a.value.is_empty()));
        let e = parse_advice("net.core.rmem_max = 1\n").unwrap_err();
        assert!(e.contains("net.core.rmem_max"), "{e}");
        assert!(parse_advice("# at least: x\nno equals sign\n").is_err());
        // A blank line ends a comment's reach.
        assert!(parse_advice("# at least: x\n\nnet.core.rmem_max = 1\n").is_err());
    }

    #[test]
    fn comparisons() {
        let a = |cmp, v: &str| SysctlAdvice {
            key: "k".into(),
            value: v.into(),
            cmp,
            why: String::new(),
        };
        assert!(a(Cmp::AtLeast, "8192").met_by("65535"));
        assert!(!a(Cmp::AtLeast, "8192").met_by("4096"));
        assert!(a(Cmp::AtMost, "131072").met_by("16384"));
        assert!(!a(Cmp::AtMost, "131072").met_by("4294967295"));
        assert!(a(Cmp::Exactly, "1024 65535").met_by("1024\t65535"));
        assert!(!a(Cmp::Exactly, "1024 65535").met_by("32768\t60999"));
        assert!(!a(Cmp::AtLeast, "8192").met_by("garbage"));
    }

    #[test]
    fn a_tuned_node_passes() {
        let dir = tuned_node();
        let mut cfg = Config::default();
        cfg.sfu.workers = Workers::Auto;
        let f = run_on(dir.path(), &probes(), &cfg);
        assert_eq!(differing(&f), Vec::<&str>::new(), "{}", render(&f));
        assert_eq!(exit_code(&f), 0);
        let report = render(&f);
        assert!(
            report
                .contains("ok       net.core.rmem_max: found 16777216; advised at least 16777216"),
            "{report}"
        );
        assert!(report.contains("IRQ/RPS spread eth0"), "{report}");
        assert!(!report.contains("docker0"), "{report}");
        assert!(
            report.contains("\"auto\" = 3 on 4 usable core(s)"),
            "{report}"
        );
    }

    /// Each setting off by itself: that finding alone differs and the exit status is 1.
    #[test]
    fn each_differing_setting_is_reported_and_fails() {
        /// Puts one setting of a tuned node off the advice.
        type Spoil = Box<dyn Fn(&Path, &mut Probes, &mut Config)>;
        let base = Config::default();
        let mut cases: Vec<(String, Spoil)> = Vec::new();
        for a in advice() {
            let worse = match a.cmp {
                Cmp::AtLeast => (a.value.parse::<u64>().unwrap() / 2).to_string(),
                Cmp::AtMost => (a.value.parse::<u64>().unwrap() * 2).to_string(),
                Cmp::Exactly => "32768 60999".to_string(),
            };
            let path = a.proc_path();
            cases.push((
                a.key.clone(),
                Box::new(move |r, _, _| write(r, &path, &worse)),
            ));
        }
        cases.push((
            "net.core.rmem_max vs sfu.socket_recv_buffer".into(),
            Box::new(|_, _, c| c.sfu.socket_recv_buffer = 32 << 20),
        ));
        cases.push((
            "net.core.wmem_max vs sfu.socket_send_buffer".into(),
            Box::new(|_, _, c| c.sfu.socket_send_buffer = 32 << 20),
        ));
        cases.push((
            "fs.file-max vs connection caps".into(),
            Box::new(|_, p, c| {
                p.nofile = Some((1_024, u64::MAX));
                c.server.max_connections = 1_000_000;
                c.server.max_connections_per_ip = 1_000;
                c.rtmp.max_connections = 1_200_000;
            }),
        ));
        // (The process limit is raised in that case so only fs.file-max differs.)
        cases.push((
            "RLIMIT_NOFILE (hard) vs connection caps".into(),
            Box::new(|_, p, _| p.nofile = Some((1_024, 4_096))),
        ));
        cases.push((
            "CPU frequency governor".into(),
            Box::new(|r, _, _| {
                write(
                    r,
                    "sys/devices/system/cpu/cpu2/cpufreq/scaling_governor",
                    "powersave",
                )
            }),
        ));
        cases.push((
            "IRQ/RPS spread eth0".into(),
            Box::new(|r, _, _| {
                // One queue, every interrupt on cpu0, RPS off.
                std::fs::remove_dir_all(r.join("sys/class/net/eth0/queues/rx-1")).unwrap();
                let irqs = "  CPU0  CPU1\n 24:  99  0  PCI-MSI  0000:00:03.0-virtio0-input.0\n";
                write(r, "proc/interrupts", irqs);
            }),
        ));
        cases.push(("IRQ/RPS spread eth0".into(), Box::new(|r, _, _| {
            // Two queues, both interrupts on cpu1.
            let irqs = "  CPU0  CPU1\n 24:  0  99  PCI-MSI  eth0-TxRx-0\n 25:  0  7  PCI-MSI  eth0-TxRx-1\n";
            write(r, "proc/interrupts", irqs);
        })));
        cases.push((
            "UDP GSO (UDP_SEGMENT)".into(),
            Box::new(|_, p, _| p.gso = false),
        ));
        cases.push((
            "io_uring".into(),
            Box::new(|_, p, c| {
                p.uring = Err("Operation not permitted".into());
                c.sfu.io = "uring".into();
            }),
        ));
        cases.push((
            "kernel.io_uring_disabled".into(),
            Box::new(|r, _, c| {
                write(r, "proc/sys/kernel/io_uring_disabled", "2");
                c.sfu.io = "uring".into();
            }),
        ));
        cases.push((
            "sfu.workers vs cores".into(),
            Box::new(|_, _, c| c.sfu.workers = Workers::Count(1)),
        ));
        cases.push((
            "sfu.workers vs cores".into(),
            Box::new(|_, _, c| c.sfu.workers = Workers::Count(8)),
        ));
        for (name, spoil) in &cases {
            let dir = tuned_node();
            let (mut p, mut cfg) = (probes(), base.clone());
            spoil(dir.path(), &mut p, &mut cfg);
            let f = run_on(dir.path(), &p, &cfg);
            assert_eq!(differing(&f), vec![name.as_str()], "{}", render(&f));
            assert_eq!(exit_code(&f), 1, "{name}");
            assert!(
                render(&f).contains(&format!("DIFFERS  {name}: found ")),
                "{name}"
            );
        }
    }

    /// Settings a node does not expose, or a config does not use, are reported but pass.
    #[test]
    fn missing_files_and_unused_features_are_not_failures() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = probes();
        p.gro = false;
        p.uring = Err("Function not implemented".into());
        p.nofile = None;
        let f = run_on(dir.path(), &p, &Config::default());
        assert_eq!(differing(&f), Vec::<&str>::new(), "{}", render(&f));
        assert_eq!(exit_code(&f), 0);
        let report = render(&f);
        assert!(
            report.contains("CPU frequency governor: found not exposed"),
            "{report}"
        );
        assert!(
            report.contains("IRQ/RPS spread: found no physical NIC exposed"),
            "{report}"
        );
        assert!(
            report.contains("net.core.netdev_max_backlog: found not exposed"),
            "{report}"
        );
        assert!(
            report.contains("kernel.io_uring_disabled: found not exposed"),
            "{report}"
        );
        // The same node with the governor exposed but unreadable in one cpu: only the readable
        // ones count.
        write(
            dir.path(),
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            GOVERNOR,
        );
        std::fs::create_dir_all(dir.path().join("sys/devices/system/cpu/cpu1/cpufreq")).unwrap();
        let f = run_on(dir.path(), &p, &Config::default());
        assert_eq!(exit_code(&f), 0, "{}", render(&f));
    }

    #[test]
    fn fd_need_counts_the_caps() {
        let mut cfg = Config::default();
        cfg.sfu.workers = Workers::Count(2);
        let base =
            cfg.server.max_connections as u64 + cfg.rtmp.max_connections as u64 + FD_HEADROOM;
        assert_eq!(
            fds_needed(&cfg, 4),
            base + 2 * cfg.sfu.ice_tcp_max_connections as u64
        );
        cfg.sfu.ice_tcp_port_base = 0;
        assert_eq!(fds_needed(&cfg, 4), base);
    }
}
