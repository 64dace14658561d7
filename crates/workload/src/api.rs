//! `workload api`: a small JSON HTTP/1.1 API, the "typical microservice".
//!
//! | request | answer |
//! |---|---|
//! | `GET /health` | 200 `{"status":"ok"}` |
//! | `GET /items` | 200 JSON list of items |
//! | `GET /items/<id>` | 200 the item, 404 if absent, 400 if `<id>` is not a number |
//! | `POST /items` with `{"name": "...", "qty": N}` | 201 the created item, 400 on a bad body |
//! | anything else | 404 (unknown path) or 405 (known path, wrong method) |
//!
//! The routing is a pure function over method, path and body ([`Store::route`])
//! so it is unit-tested without sockets.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tiny_http::Method;

use crate::args::Listen;
use crate::http::{self, Listener};
use crate::{ready, result};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// One stored item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub id: u64,
    pub name: String,
    pub qty: u64,
}

/// The body of `POST /items`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItem {
    name: String,
    #[serde(default)]
    qty: u64,
}

/// The in-memory item store behind the API.
#[derive(Debug)]
pub struct Store {
    items: Vec<Item>,
    next_id: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// A store seeded with three items so `GET /items` has something to list.
    pub fn new() -> Self {
        let mut s = Self {
            items: Vec::new(),
            next_id: 1,
        };
        for (name, qty) in [("bolt", 100), ("nut", 250), ("washer", 40)] {
            s.insert(name.to_owned(), qty);
        }
        s
    }

    fn insert(&mut self, name: String, qty: u64) -> Item {
        let item = Item {
            id: self.next_id,
            name,
            qty,
        };
        self.next_id += 1;
        self.items.push(item.clone());
        item
    }

    /// Answers one request: `(status, JSON body)`.
    pub fn route(&mut self, method: &Method, path: &str, body: &[u8]) -> (u16, Value) {
        // Ignore a query string; the API has no parameters.
        let path = path.split('?').next().unwrap_or(path);
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match (method, segs.as_slice()) {
            (Method::Get, ["health"]) => (200, json!({ "status": "ok" })),
            (Method::Get, ["items"]) => (200, json!(self.items)),
            (Method::Post, ["items"]) => match serde_json::from_slice::<NewItem>(body) {
                Ok(new) if !new.name.trim().is_empty() => {
                    (201, json!(self.insert(new.name, new.qty)))
                }
                Ok(_) => (400, json!({ "error": "\"name\" must not be empty" })),
                Err(e) => (
                    400,
                    json!({ "error": format!("body must be {{\"name\": string, \"qty\": number}}: {e}") }),
                ),
            },
            (Method::Get, ["items", id]) => match id.parse::<u64>() {
                Err(_) => (
                    400,
                    json!({ "error": format!("item id {id:?} is not a number") }),
                ),
                Ok(id) => match self.items.iter().find(|i| i.id == id) {
                    Some(item) => (200, json!(item)),
                    None => (404, json!({ "error": format!("no item {id}") })),
                },
            },
            (_, ["health"]) | (_, ["items"]) | (_, ["items", _]) => (
                405,
                json!({ "error": format!("method {method} not allowed on {path}") }),
            ),
            _ => (404, json!({ "error": format!("no route for {path}") })),
        }
    }
}

/// Runs the API until SIGTERM/SIGINT; returns the result object.
pub fn run(listen: &Listen) -> Result<serde_json::Map<String, Value>, crate::WorkloadError> {
    let listener = Listener::bind("api", listen)?;
    let mut store = Store::new();
    ready::signal()?;
    let served = listener.serve(|req| {
        let method = req.method().clone();
        let url = req.url().to_owned();
        let body = match method {
            Method::Post | Method::Put => match http::read_body(req, MAX_BODY) {
                Ok(b) => b,
                Err(msg) => return http::error(400, &msg),
            },
            _ => Vec::new(),
        };
        let (status, value) = store.route(&method, &url, &body);
        http::json(status, &value)
    });
    let mut out = result::object("api", true);
    out.insert("requests".into(), served.into());
    out.insert("items".into(), store.items.len().into());
    out.insert("port".into(), listener.addr.port().into());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_listing() {
        let mut s = Store::new();
        assert_eq!(
            s.route(&Method::Get, "/health", b""),
            (200, json!({"status":"ok"}))
        );
        let (st, v) = s.route(&Method::Get, "/items", b"");
        assert_eq!(st, 200);
        assert_eq!(v.as_array().unwrap().len(), 3);
    }

    #[test]
    fn create_then_fetch() {
        let mut s = Store::new();
        let (st, v) = s.route(&Method::Post, "/items", br#"{"name":"gear","qty":3}"#);
        assert_eq!(st, 201);
        assert_eq!(v["id"], 4);
        let (st, v) = s.route(&Method::Get, "/items/4", b"");
        assert_eq!(st, 200);
        assert_eq!(v["name"], "gear");
        assert_eq!(v["qty"], 3);
    }

    #[test]
    fn bad_requests() {
        let mut s = Store::new();
        assert_eq!(s.route(&Method::Get, "/items/99", b"").0, 404);
        assert_eq!(s.route(&Method::Get, "/items/abc", b"").0, 400);
        assert_eq!(s.route(&Method::Post, "/items", b"not json").0, 400);
        assert_eq!(s.route(&Method::Post, "/items", br#"{"name":""}"#).0, 400);
        assert_eq!(
            s.route(&Method::Post, "/items", br#"{"name":"x","evil":1}"#)
                .0,
            400
        );
        assert_eq!(s.route(&Method::Get, "/nope", b"").0, 404);
        assert_eq!(s.route(&Method::Delete, "/items", b"").0, 405);
    }
}
