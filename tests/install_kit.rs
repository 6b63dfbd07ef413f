//! The tuning/ kit as an operator uses it: `tuning/install.sh` staged into a temporary DESTDIR
//! (binary, example config, systemd unit, sysctl drop-in), its `--check` (files current, config
//! valid, unit verified by `systemd-analyze verify`), and `deltacast doctor` run for real.
//! Needs `systemd-analyze` (Debian package `systemd`; scripts/test installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::process::{run_bounded, tool_runs};
use testkit::*;

fn install_sh() -> PathBuf {
    workspace_root().join("tuning/install.sh")
}

/// Panics, as the other real-peer guards do, when systemd-analyze is missing.
fn require_systemd_analyze() {
    assert!(
        tool_runs("systemd-analyze", "--version"),
        "`systemd-analyze` is required to verify tuning/deltacast.service but could not be run: \
         install it (Debian: apt-get install systemd) or run scripts/test"
    );
}

/// Runs install.sh with `args` and DESTDIR=`dest`: (success, stdout + stderr).
fn install(dest: &Path, args: &[&str]) -> (bool, String) {
    let (status, out, err) = run_bounded(
        Command::new("bash")
            .arg(install_sh())
            .args(args)
            .env("DESTDIR", dest),
        Duration::from_secs(60),
    );
    (status.success(), format!("{out}{err}"))
}

fn staged() -> tempfile::TempDir {
    let dest = tempfile::tempdir().unwrap();
    let bin = deltacast_bin();
    let (ok, out) = install(dest.path(), &["--bin", bin.to_str().unwrap()]);
    assert!(ok, "install.sh into {}:\n{out}", dest.path().display());
    dest
}

#[test]
fn install_stages_the_kit_and_check_passes() {
    require_systemd_analyze();
    let dest = staged();
    let d = dest.path();
    let root = workspace_root();
    for (installed, source) in [
        ("usr/bin/deltacast", deltacast_bin()),
        (
            "etc/deltacast/deltacast.toml",
            root.join("tuning/deltacast.toml"),
        ),
        (
            "etc/systemd/system/deltacast.service",
            root.join("tuning/deltacast.service"),
        ),
        (
            "etc/sysctl.d/60-deltacast.conf",
            root.join("tuning/sysctl-deltacast.conf"),
        ),
        (
            "usr/share/doc/deltacast/TUNING.md",
            root.join("tuning/README.md"),
        ),
    ] {
        let got = std::fs::read(d.join(installed)).unwrap_or_else(|e| panic!("{installed}: {e}"));
        assert!(
            got == std::fs::read(&source).unwrap(),
            "{installed} differs from {}",
            source.display()
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("usr/bin/deltacast"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);

    // The whole tree checks out: files current, config valid, unit verified.
    let (ok, out) = install(d, &["--check", "--bin", deltacast_bin().to_str().unwrap()]);
    assert!(ok && out.contains("is current"), "{out}");

    // An edited config survives a re-install; a changed drop-in is found by --check.
    let cfg = d.join("etc/deltacast/deltacast.toml");
    let edited = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("change-me", "s3cret");
    std::fs::write(&cfg, &edited).unwrap();
    let (ok, out) = install(d, &["--bin", deltacast_bin().to_str().unwrap()]);
    assert!(ok && out.contains("kept"), "{out}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), edited);
    std::fs::write(
        d.join("etc/sysctl.d/60-deltacast.conf"),
        "net.core.rmem_max = 1\n",
    )
    .unwrap();
    let (ok, out) = install(d, &["--check"]);
    assert!(!ok && out.contains("60-deltacast.conf"), "{out}");
}

#[test]
fn check_fails_on_a_bad_config_or_unit() {
    require_systemd_analyze();
    let dest = staged();
    let d = dest.path();
    let cfg = d.join("etc/deltacast/deltacast.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{good}\n[sfu]\nworkers = \"all\"\n")).unwrap();
    let (ok, out) = install(d, &["--check"]);
    assert!(!ok && out.contains("invalid config"), "{out}");
    std::fs::write(&cfg, good).unwrap();

    // systemd-analyze only warns about an unknown key: --check must still fail.
    let unit = d.join("etc/systemd/system/deltacast.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(
        &unit,
        text.replace("LimitNOFILE=1048576", "LimitNOFILE=lots\nRestartt=always"),
    )
    .unwrap();
    let (ok, out) = install(d, &["--check"]);
    assert!(!ok && out.contains("systemd-analyze verify"), "{out}");
    assert!(out.contains("Restartt"), "{out}");
}

/// What the unit promises an operator, beyond what systemd-analyze checks.
#[test]
fn unit_runs_the_relay_hardened() {
    let unit = std::fs::read_to_string(workspace_root().join("tuning/deltacast.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/deltacast serve --config /etc/deltacast/deltacast.toml",
        "Restart=on-failure",
        "LimitNOFILE=1048576",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(line), "deltacast.service lacks {line:?}");
    }
}

/// `deltacast doctor` on this machine: every check reported, exit 0 or 1 to match the findings;
/// a bad config exits 2.
#[test]
fn doctor_reports_every_check() {
    let cfg = workspace_root().join("tuning/deltacast.toml");
    let (status, out, err) = run_bounded(
        Command::new(deltacast_bin())
            .arg("doctor")
            .arg("--config")
            .arg(&cfg),
        Duration::from_secs(30),
    );
    for name in [
        "net.core.rmem_max:",
        "net.core.wmem_max:",
        "net.core.rmem_default:",
        "net.core.netdev_max_backlog:",
        "net.core.rmem_max vs sfu.socket_recv_buffer",
        "fs.file-max vs connection caps",
        "RLIMIT_NOFILE (hard) vs connection caps",
        "CPU frequency governor",
        "IRQ/RPS spread",
        "UDP GSO (UDP_SEGMENT)",
        "UDP GRO (UDP_GRO)",
        "io_uring:",
        "kernel.io_uring_disabled",
        "sfu.workers vs cores",
    ] {
        assert!(
            out.contains(name),
            "doctor did not report {name:?}:\n{out}{err}"
        );
    }
    let differs = out.lines().any(|l| l.starts_with("DIFFERS"));
    assert_eq!(
        status.code(),
        Some(i32::from(differs)),
        "exit status vs findings:\n{out}{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[sfu]\nworkers = 0\n").unwrap();
    let (status, out, err) = run_bounded(
        Command::new(deltacast_bin())
            .arg("doctor")
            .arg("--config")
            .arg(&bad),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(err.contains("sfu.workers"), "{err}");
}
