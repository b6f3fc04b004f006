//! The HTTP server under the API and the pipeline's trigger endpoint: HTTP/1.1 on hyper, over
//! plain TCP or rustls, with a bound on how long a client may take to say what it wants.
//!
//! Written here rather than taken from `axum::serve` or axum-server because neither bounds the
//! time before a request: both sniff each connection for an HTTP/2 preface first, where no timer
//! runs, so a client that connects and sends nothing (or part of the preface) holds its
//! connection, task and file descriptor for ever, and cleartext HTTP/2 has no header timeout at
//! all. Here every connection is HTTP/1.1 (ALPN offers only `http/1.1` over TLS): the TLS
//! handshake must end within the header timeout, and hyper's header-read timer then runs from
//! the connection's start and from each response until the next request's headers are in, so
//! an idle kept-alive connection closes after the same limit. A response being streamed (the
//! live event stream) is not a wait for headers and is not cut. A request body that stops
//! arriving fails its request after `api.body_timeout_ms`, a response that a client stops
//! reading closes its connection after the same time, and at most `api.max_connections`
//! connections are served at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt as _;
use tower_http::timeout::TimeoutBody;

use super::TlsConfig;

/// The server's settings for one listener.
#[derive(Clone)]
pub struct ServerOptions {
    /// Longest a client may take to finish its TLS handshake, and to send a request's headers
    /// from the connection's start or from the previous response (`api.header_timeout_ms`).
    pub header_timeout: Duration,
    /// Longest a request body may go without sending anything once the handler reads it, and
    /// a response may wait on a client that reads nothing (`api.body_timeout_ms`): the request
    /// fails, or the connection is closed, rather than wait for ever.
    pub body_idle_timeout: Duration,
    /// Connections served at once (`api.max_connections`); more wait in the kernel's backlog
    /// until one closes.
    pub max_connections: usize,
    /// Serve HTTPS with this configuration (see [`tls_config`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Once `stop` completes: how long requests in progress may still take before their
    /// connections are closed.
    pub drain: Duration,
}

impl ServerOptions {
    /// The options of the API's listener: `[api]`'s, HTTPS when `api.tls` is set (its files
    /// read now, so that a bad certificate stops the start).
    pub fn for_api(api: &super::ApiConfig, drain: Duration) -> anyhow::Result<ServerOptions> {
        let tls = api.tls.as_ref().map(tls_config).transpose()?;
        Ok(ServerOptions::from_config(api, tls, drain))
    }

    /// The options `[api]` asks for, with `drain` and `tls` given.
    pub fn from_config(
        api: &super::ApiConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        drain: Duration,
    ) -> ServerOptions {
        ServerOptions {
            header_timeout: Duration::from_millis(api.header_timeout_ms),
            body_idle_timeout: Duration::from_millis(api.body_timeout_ms),
            max_connections: api.max_connections,
            tls,
            drain,
        }
    }
}

/// The rustls configuration for `api.tls`: the certificate chain and private key read from
/// their PEM files, ALPN offering HTTP/1.1 only, ring as every TLS connection of the binary.
pub fn tls_config(tls: &TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "api.tls.cert = {}: cannot read a PEM certificate chain",
                tls.cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "api.tls.cert = {}: holds no PEM certificate",
            tls.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).with_context(|| {
        format!(
            "api.tls.key = {}: cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            tls.key.display()
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("rustls has no protocol version in common with its provider")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| {
        format!(
            "cannot use api.tls.key = {} with api.tls.cert = {} (a key of another certificate, \
             or of a kind rustls does not support)",
            tls.key.display(),
            tls.cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` on `listener` until `stop` completes; then accepts no more connections,
/// lets requests in progress finish (kept-alive connections close after their response), and
/// returns when they have or, closing those left, after `options.drain`. Each request carries
/// the client's [`ConnectInfo`]`<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    options: ServerOptions,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    // TLS handshakes still going on when the server stops are given up.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut connections = JoinSet::new();
    let mut at_limit = false;
    tokio::pin!(stop);
    loop {
        let accept = async {
            let slot = slots.clone().acquire_owned().await;
            (slot, listener.accept().await)
        };
        // Said once when the limit is reached, and once when a tenth of it is free again.
        let free = slots.available_permits();
        if free == 0 && !at_limit {
            at_limit = true;
            tracing::warn!(
                max_connections = options.max_connections,
                "HTTP connections at api.max_connections: new ones wait until one closes."
            );
        } else if at_limit && free >= (options.max_connections / 10).max(1) {
            at_limit = false;
            tracing::info!(free, "HTTP connections back under api.max_connections.");
        }
        let (slot, tcp, peer) = tokio::select! {
            biased;
            () = &mut stop => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "An HTTP connection's task panicked; the connection is closed.");
                }
                continue;
            }
            (slot, accepted) = accept => match (slot, accepted) {
                (Ok(slot), Ok((tcp, peer))) => (slot, tcp, peer),
                (_, Err(e)) => {
                    accept_failed(e).await;
                    continue;
                }
                (Err(_), _) => unreachable!("the connection slots are never closed"),
            },
        };
        // Answers are small and written whole: no reason to wait for more to send.
        let _ = tcp.set_nodelay(true);
        // A client that stops reading (a tab left on a stalled stream, a half-read export)
        // would hold the connection for as long as the response lasts.
        let mut tcp = tokio_io_timeout::TimeoutStream::new(tcp);
        tcp.set_write_timeout(Some(options.body_idle_timeout));
        let tcp = Box::pin(tcp);
        let watcher = graceful.watcher();
        let router = router.clone();
        let http = http.clone();
        let tls = tls.clone();
        let mut stopping = stopping.clone();
        let (header_timeout, body_idle) = (options.header_timeout, options.body_idle_timeout);
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let mut request = request.map(|body| TimeoutBody::new(body_idle, body));
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request)
            });
            let served = match tls {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(tcp), service))
                        .await
                }
                Some(tls) => {
                    let handshake = tokio::select! {
                        done = tokio::time::timeout(header_timeout, tls.accept(tcp)) => done,
                        _ = stopping.wait_for(|stopping| *stopping) => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(http.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed.");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(client = %peer, "TLS handshake not finished within api.header_timeout_ms; connection closed.");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                // Clients that go away, send garbage or stall in their headers: theirs to fix.
                tracing::debug!(client = %peer, error = %e, "HTTP connection ended with an error.");
            }
        });
    }
    // No new connections from here on.
    drop(listener);
    let _ = stopping_tx.send(true);
    if tokio::time::timeout(options.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            still_busy = connections.len(),
            drain_s = options.drain.as_secs_f64(),
            "HTTP connections still busy at the end of the drain time; closing them."
        );
    }
    connections.shutdown().await;
}

/// An `accept` that failed. A client that gave up before its connection was accepted is no
/// news; anything else (most often the process out of file descriptors: raise `ulimit -n`) is
/// logged, and accepting waits a second so that connections can close meanwhile.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "Cannot accept HTTP connections (out of file descriptors? see `ulimit -n`); trying again in 1 s.");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
