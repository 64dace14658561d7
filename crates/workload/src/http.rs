//! Shared HTTP plumbing of the servers (api, cache) on tiny_http: binding,
//! JSON responses and the serve loop that ends on SIGTERM/SIGINT.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use tiny_http::{Header, Request, Response, Server};

use crate::args::Listen;
use crate::signals::{self, SignalError};

/// Errors of the HTTP servers.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Binding the listening socket failed (port in use, bad address).
    #[error("Could not listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Setting up the termination signals failed.
    #[error(transparent)]
    Signals(#[from] SignalError),
}

/// A listening server that stops on SIGTERM/SIGINT.
pub struct Listener {
    server: Arc<Server>,
    /// The bound address (the real port when `--port 0` was given).
    pub addr: SocketAddr,
}

impl Listener {
    /// Blocks the termination signals, binds, prints
    /// `listening on ADDR:PORT` to stderr and starts the signal thread.
    pub fn bind(workload: &str, listen: &Listen) -> Result<Self, HttpError> {
        // Before tiny_http spawns its threads, so they inherit the mask.
        signals::block_term()?;
        let addr = SocketAddr::new(listen.bind, listen.port);
        let server = Server::http(addr).map_err(|source| HttpError::Bind { addr, source })?;
        let addr = server
            .server_addr()
            .to_ip()
            .expect("an HTTP server bound to an IP address");
        let server = Arc::new(server);
        let stopper = Arc::clone(&server);
        signals::on_term(move |_| stopper.unblock())?;
        eprintln!("{workload}: listening on {addr}");
        Ok(Self { server, addr })
    }

    /// Hands each request to `handle` until a termination signal arrives;
    /// returns the number of requests served.
    pub fn serve<F>(&self, mut handle: F) -> u64
    where
        F: FnMut(&mut Request) -> Response<std::io::Cursor<Vec<u8>>>,
    {
        let mut served = 0u64;
        for mut req in self.server.incoming_requests() {
            let resp = handle(&mut req);
            // A client that hung up early is its own problem, not the server's.
            let _ = req.respond(resp);
            served += 1;
        }
        served
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .finish()
    }
}

/// A response with a JSON body.
pub fn json(status: u16, body: &serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.to_string().into_bytes())
        .with_status_code(status)
        .with_header(content_type("application/json"))
}

/// A JSON error body `{"error": msg}`.
pub fn error(status: u16, msg: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    json(status, &serde_json::json!({ "error": msg }))
}

/// A response with raw bytes.
pub fn bytes(status: u16, body: Vec<u8>) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body)
        .with_status_code(status)
        .with_header(content_type("application/octet-stream"))
}

fn content_type(v: &str) -> Header {
    Header::from_bytes(&b"Content-Type"[..], v.as_bytes()).expect("a valid header")
}

/// Reads a request body, refusing more than `limit` bytes.
pub fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    req.as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("could not read the request body: {e}"))?;
    if body.len() > limit {
        return Err(format!("request body larger than {limit} bytes"));
    }
    Ok(body)
}
