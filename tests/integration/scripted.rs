//! A scripted HTTP server: answers each request with the next response of a
//! script and records what it received, so tests can assert exact call
//! counts, headers and bodies (the wiremock pattern, on axum).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One canned answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
        }
    }

    pub fn error(status: u16, code: &str) -> Answer {
        Answer::json(
            status,
            serde_json::json!({"error": code, "message": "scripted"}),
        )
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

/// What the server received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    script: VecDeque<Answer>,
    received: Vec<Received>,
}

pub struct Scripted {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Scripted {
    pub async fn start(script: Vec<Answer>) -> Scripted {
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            received: Vec::new(),
        }));
        let shared = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let shared = shared.clone();
                async move {
                    let answer = {
                        let mut s = shared.lock().unwrap();
                        s.received.push(Received {
                            method,
                            uri,
                            headers,
                            body,
                        });
                        s.script.pop_front()
                    };
                    respond(answer)
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Scripted { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }
}

fn respond(answer: Option<Answer>) -> Response {
    let Some(answer) = answer else {
        return (StatusCode::IM_A_TEAPOT, "script exhausted").into_response();
    };
    let mut resp = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    for (name, value) in answer.headers {
        resp.headers_mut().insert(name, value.parse().unwrap());
    }
    resp
}

/// A raw TCP server that accepts `resets` connections and drops each
/// without answering (a connection reset mid-request), then serves `then`
/// as a minimal HTTP/1.1 response on every later connection.
pub async fn flaky_tcp(resets: usize, then: Answer) -> (String, Arc<Mutex<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0usize));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = {
                let mut c = counter.lock().unwrap();
                *c += 1;
                *c
            };
            let then = then.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                if n <= resets {
                    // Drop without a response: the client sees a reset / EOF.
                    return;
                }
                let head = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    then.status,
                    then.body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(then.body.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/api/v1"), accepted)
}
