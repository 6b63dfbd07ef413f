//! The one HTTP/1.1 client of the tests and load tools: blocking, on a fresh or kept-alive
//! connection, bounded in time, measuring the time to the last body byte; chunked bodies decoded.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One HTTP response, with the time from starting to connect to the last body byte.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub elapsed: Duration,
    /// When the full response had been read.
    pub done_at: Instant,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A blocking HTTP/1.1 GET on a fresh connection (`Connection: close`), bounded by `timeout`
/// for connect and for each read.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Resp> {
    http_request(addr, "GET", path, timeout)
}

pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> io::Result<Resp> {
    http_request_with(addr, method, path, &[], timeout)
}

/// [`http_request`] with extra request headers (`("Range", "bytes=0-99")`).
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<Resp> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    exchange(&mut s, method, path, headers, false, start, timeout)
}

/// A request with a body on a fresh connection (`Connection: close`), bounded by `timeout`.
pub fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Resp> {
    http_send_from(None, addr, method, path, headers, body, timeout)
}

/// [`http_send`] from source address `from` (a load generator spreading its clients over
/// 127.0.0.2..254, as the relay bounds pending sessions per address); None: the kernel's choice.
pub fn http_send_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Resp> {
    let start = Instant::now();
    let mut s = match from {
        None => TcpStream::connect_timeout(&addr, timeout)?,
        Some(ip) => {
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            sock.bind(&SocketAddr::new(ip, 0).into())?;
            sock.connect_timeout(&addr.into(), timeout)?;
            sock.into()
        }
    };
    s.set_nodelay(true)?;
    exchange_with_body(&mut s, method, path, headers, body, true, start, timeout)
}

/// [`http_send`] bounded by 10 s, panicking when no HTTP answer comes.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    http_send(addr, method, path, headers, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A control-API request: bearer `token`, JSON `body`, bounded by 10 s.
pub fn api_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> io::Result<Resp> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let body = body.unwrap_or_default().as_bytes();
    http_send(addr, method, path, &headers, body, Duration::from_secs(10))
}

/// One request/response on an open connection (HTTP/1.1 keep-alive unless `close`), bounded by
/// `timeout` for each read and in total; `start` is when the answer's `elapsed` counts from.
pub fn exchange(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    close: bool,
    start: Instant,
    timeout: Duration,
) -> io::Result<Resp> {
    exchange_with_body(s, method, path, headers, &[], close, start, timeout)
}

/// [`exchange`] with a request body (sent with its `Content-Length`).
#[allow(clippy::too_many_arguments)]
pub fn exchange_with_body(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
    start: Instant,
    timeout: Duration,
) -> io::Result<Resp> {
    let deadline = start + timeout;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let addr = s.peer_addr()?;
    let conn = if close { "close" } else { "keep-alive" };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: deltacast-e2e\r\nConnection: {conn}\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    // A caller's own Content-Length (an abuse test's lie) is sent as given.
    let has_length = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !has_length && (!body.is_empty() || !matches!(method, "GET" | "HEAD")) {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut tmp = [0u8; 16 * 1024];
    // Read the head.
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "response head timed out",
            ));
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before the response head ({} bytes)",
                    buf.len()
                ),
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let hget = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut rest = buf[head_end + 4..].to_vec();
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        Vec::new()
    } else if let Some(len) = hget("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "body timed out"));
            }
            let n = s.read(&mut tmp)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body cut at {} of {len} bytes", rest.len()),
                ));
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        rest.truncate(len);
        rest
    } else {
        // Chunked or close-delimited: read to EOF, then decode.
        loop {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "body timed out"));
            }
            let n = s.read(&mut tmp)?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        if hget("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            dechunk(&rest)?
        } else {
            rest
        }
    };
    let done_at = Instant::now();
    Ok(Resp {
        status,
        headers,
        body,
        elapsed: done_at - start,
        done_at,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = find(data, b"\r\n").ok_or_else(|| io::Error::other("bad chunk size line"))?;
        let size_str = String::from_utf8_lossy(&data[..i]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size_str:?}")))?;
        data = &data[i + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(io::Error::other("chunk cut short"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
