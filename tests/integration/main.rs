//! Integration tests, built as one binary. Every test talks only to servers
//! on 127.0.0.1 port 0: the embedded mock, or a scripted server when a test
//! needs exact control over each answer.

mod client;
mod scripted;

/// Installs the TLS provider reqwest needs before any client is built.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
