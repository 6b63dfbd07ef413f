//! Misbehaving TCP peers for the RTMP push tests: a proxy that stalls or resets mid-stream, a
//! server that stalls in the handshake, and a rustls TLS terminator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a [`Proxy`] does to each connection after forwarding for a while.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Stop reading from the client (and forwarding), keep the socket open.
    StallAfter(Duration),
    /// Reset the client connection (RST) and close the upstream one.
    ResetAfter(Duration),
}

/// Loopback TCP peers run on a small tokio runtime of their own.
pub struct Peers {
    rt: tokio::runtime::Runtime,
    held: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
    pub accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Default for Peers {
    fn default() -> Self {
        Self::new()
    }
}

impl Peers {
    pub fn new() -> Peers {
        Peers {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
            held: Arc::new(Mutex::new(Vec::new())),
            accepted: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn listener(&self, recv_buf: Option<u32>) -> (tokio::net::TcpListener, u16) {
        let _g = self.rt.enter();
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(b) = recv_buf {
            s.set_recv_buffer_size(b).unwrap();
        }
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = s.local_addr().unwrap().port();
        (s.listen(64).unwrap(), port)
    }

    /// A proxy to `upstream` that injects `fault` into every connection. Returns its port.
    pub fn proxy(&self, upstream: SocketAddr, fault: Fault) -> u16 {
        // A small receive buffer so that a stall reaches the sender quickly.
        let (l, port) = self.listener(Some(64 * 1024));
        let (held, accepted) = (self.held.clone(), self.accepted.clone());
        self.rt.spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let held = held.clone();
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let after = match fault {
                        Fault::StallAfter(d) | Fault::ResetAfter(d) => d,
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let c2u = async { tokio::io::copy(&mut cr, &mut uw).await };
                    let u2c = async { tokio::io::copy(&mut ur, &mut cw).await };
                    let _ = tokio::time::timeout(after, async { tokio::join!(c2u, u2c) }).await;
                    let client = cr.reunite(cw).unwrap();
                    drop(ur.reunite(uw));
                    match fault {
                        Fault::StallAfter(_) => held.lock().unwrap().push(client),
                        Fault::ResetAfter(_) => {
                            let _ = client.set_zero_linger();
                            drop(client);
                        }
                    }
                });
            }
        });
        port
    }

    /// A server that accepts, reads the RTMP C0+C1 handshake (1537 bytes), then never reads or
    /// writes again (the socket stays open). Returns its port.
    pub fn stall_in_handshake(&self) -> u16 {
        let (l, port) = self.listener(Some(64 * 1024));
        let (held, accepted) = (self.held.clone(), self.accepted.clone());
        self.rt.spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let held = held.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut b = vec![0u8; 1537];
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await;
                    held.lock().unwrap().push(s);
                });
            }
        });
        port
    }

    /// A TLS terminator (self-signed certificate for 127.0.0.1 from rcgen) forwarding the
    /// plaintext to `upstream`. Returns its port.
    pub fn tls_terminator(&self, upstream: SocketAddr) -> u16 {
        let acceptor = self_signed_acceptor();
        let (l, port) = self.listener(None);
        let accepted = self.accepted.clone();
        self.rt.spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        port
    }
}

/// A rustls acceptor with a fresh self-signed certificate for 127.0.0.1 (rcgen), for test TLS
/// servers that clients reach with certificate verification off.
pub fn self_signed_acceptor() -> tokio_rustls::TlsAcceptor {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.held.lock().unwrap().clear();
    }
}
