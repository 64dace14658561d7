//! `workload cache`: a memory-resident key/value service.
//!
//! It allocates `--mib` MiB and writes one byte to every page, so the working
//! set is resident (not just reserved) before it signals ready; then it
//! serves `GET /health`, `GET /kv/<key>` (200 value or 404) and `PUT /kv/<key>` (201 new,
//! 200 replaced) until SIGTERM/SIGINT. The result line reports the resident
//! size from `/proc/self/status`.

use std::collections::HashMap;

use serde_json::Value;
use tiny_http::Method;

use crate::args::Listen;
use crate::http::{self, Listener};
use crate::{memory, ready, result, status};

/// Largest value accepted by `PUT`.
const MAX_VALUE: usize = 1024 * 1024;

/// Runs the cache until SIGTERM/SIGINT; returns the result object.
pub fn run(
    mib: u64,
    listen: &Listen,
) -> Result<serde_json::Map<String, Value>, crate::WorkloadError> {
    // Touch first: ready means "working set resident".
    let working_set = memory::touched(mib * memory::MIB);
    let listener = Listener::bind("cache", listen)?;
    let rss_ready = status::self_rss_kib();
    ready::signal()?;
    let mut kv: HashMap<String, Vec<u8>> = HashMap::new();
    let served = listener.serve(|req| {
        let url = req.url().to_owned();
        // The same health check as `api`, so probes treat both alike.
        if url == "/health" && *req.method() == Method::Get {
            return http::bytes(200, br#"{"status":"ok"}"#.to_vec());
        }
        let Some(key) = url
            .strip_prefix("/kv/")
            .filter(|k| !k.is_empty() && !k.contains('/'))
        else {
            return http::error(404, &format!("no route for {url}; use /kv/<key>"));
        };
        let key = key.to_owned();
        match req.method() {
            Method::Get => match kv.get(&key) {
                Some(v) => http::bytes(200, v.clone()),
                None => http::error(404, &format!("no key {key:?}")),
            },
            Method::Put => match http::read_body(req, MAX_VALUE) {
                Ok(body) => {
                    let status = if kv.insert(key, body).is_some() {
                        200
                    } else {
                        201
                    };
                    http::json(status, &serde_json::json!({ "stored": true }))
                }
                Err(msg) => http::error(400, &msg),
            },
            m => http::error(405, &format!("method {m} not allowed; use GET or PUT")),
        }
    });
    let mut out = result::object("cache", true);
    out.insert("requests".into(), served.into());
    out.insert("keys".into(), kv.len().into());
    out.insert("mib".into(), mib.into());
    out.insert("rss_kib_ready".into(), rss_ready.into());
    out.insert("rss_kib".into(), status::self_rss_kib().into());
    out.insert("port".into(), listener.addr.port().into());
    // Keep the working set alive (and resident) until the very end.
    out.insert("touched_pages".into(), memory::pages(&working_set).into());
    Ok(out)
}
