//! The command line and the config file, end to end: unknown keys are rejected by name, CLI flags
//! override the file. No encoder needed.

use std::process::Command;
use std::time::Duration;

use testkit::*;

#[test]
fn unknown_config_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[hls]\npart_target = 200\n").unwrap();
    let (status, out, err) = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_deltacast"))
            .args(["serve", "--config"])
            .arg(&cfg),
        Duration::from_secs(20),
    );
    assert!(
        !status.success(),
        "serve accepted an unknown key:\n{out}{err}"
    );
    assert!(
        format!("{out}{err}").contains("part_target"),
        "the error does not name the key:\n{out}{err}"
    );
    let (status, out, err) = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_deltacast"))
            .args(["check-config", "--config"])
            .arg(&cfg),
        Duration::from_secs(20),
    );
    assert!(
        !status.success(),
        "check-config accepted an unknown key:\n{out}{err}"
    );
}

/// Kills the child when the test ends, however it ends.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cli_flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file_http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let flag_http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rtmp = format!("127.0.0.1:{}", free_port());
    let cfg = dir.path().join("deltacast.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nhttp_listen = \"{file_http}\"\n[rtmp]\nlisten = \"{rtmp}\"\n"),
    )
    .unwrap();
    let log = dir.path().join("log");
    let child = Command::new(env!("CARGO_BIN_EXE_deltacast"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--http", &flag_http.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start deltacast");
    let _kill = Kill(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http_get(flag_http, "/healthz", Duration::from_secs(1)) {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /healthz on the --http address within 20 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        http_get(file_http, "/healthz", Duration::from_secs(1)).is_err(),
        "the file's http_listen is served although --http overrode it"
    );
}

/// Push URLs and provider settings are checked by their own modules, not by `config`:
/// `check-config` must still run those checks and name the key.
#[test]
fn check_config_rejects_bad_urls_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, word)) in [
        (
            "[[destinations]]\nstream = \"show\"\nurl = \"http://h/a/k\"\n",
            "destinations (stream 'show')",
        ),
        (
            "[[streams]]\nname = \"a\"\nprovider = { kind = \"cdn\", hls_base = \"x\" }\n",
            "streams.a: provider",
        ),
        (
            "[web]\npublic_url = \"live.example.com\"\n",
            "web.public_url",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let (status, out, err) = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_deltacast"))
                .args(["check-config", "--config"])
                .arg(&cfg),
            Duration::from_secs(20),
        );
        assert!(
            !status.success(),
            "check-config accepted:\n{text}\n{out}{err}"
        );
        assert!(
            err.contains(word),
            "the error does not name {word}:\n{text}\n{out}{err}"
        );
    }
}
