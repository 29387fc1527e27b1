//! A fake Sentry: a loopback HTTP server that accepts what a Sentry SDK
//! sends (envelopes posted to `/api/{project}/envelope/`, or events to
//! `/api/{project}/store/`), answers 200 with an event id as Sentry does,
//! and keeps every body so a test can read what was reported (SPEC §6:
//! errors and panics with their tags, nothing secret in them).

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use crate::aws::loopback::LoopbackServer;

/// A running fake Sentry; dropping it stops it.
pub struct FakeSentry {
    server: LoopbackServer,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl FakeSentry {
    pub fn start() -> FakeSentry {
        let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = Arc::clone(&bodies);
        let server = LoopbackServer::start(
            "fake-sentry",
            Duration::ZERO,
            Box::new(move |headers, body| {
                let gzip = headers
                    .get("content-encoding")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("gzip"));
                let text = if gzip {
                    let mut out = String::new();
                    match flate2::read::GzDecoder::new(body).read_to_string(&mut out) {
                        Ok(_) => out,
                        Err(_) => String::from_utf8_lossy(body).into_owned(),
                    }
                } else {
                    String::from_utf8_lossy(body).into_owned()
                };
                kept.lock().unwrap_or_else(|p| p.into_inner()).push(text);
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(
                        br#"{"id":"0123456789abcdef0123456789abcdef"}"#,
                    )))
                    .expect("an answer")
            }),
        );
        FakeSentry { server, bodies }
    }

    /// A DSN that points the SDK here (project 1).
    pub fn dsn(&self) -> String {
        let address = self.server.url().trim_start_matches("http://");
        format!("http://fakepublickey@{address}/1")
    }

    /// Every body received so far (decompressed), oldest first.
    pub fn bodies(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until a body contains `text`; returns it, or `None` after `timeout`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(body) = self.bodies().into_iter().find(|b| b.contains(text)) {
                return Some(body);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
