//! A small workspace app for the app proxy's tests (`tests/it/proxy.rs` runs it in a
//! container): on every port given on its command line it answers
//! - `GET /healthz` with `ok`,
//! - a WebSocket handshake on any path with an echo of every message,
//! - anything else with JSON: the method, the path with its query, the request headers
//!   and the number of body bytes it read.
//!
//!   proxy_app 8080 8081

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let ports: Vec<u16> =
        std::env::args().skip(1).map(|port| port.parse()).collect::<Result<_, _>>()?;
    if ports.is_empty() {
        return Err("usage: proxy_app PORT...".into());
    }
    let mut servers = tokio::task::JoinSet::new();
    for port in ports {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
        servers.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(request, port));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
    }
    while servers.join_next().await.is_some() {}
    Ok(())
}

async fn answer(
    mut request: Request<Incoming>,
    port: u16,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    if let Some(key) = request.headers().get(SEC_WEBSOCKET_KEY).cloned() {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(message)) = socket.next().await {
                if message.is_close() {
                    break;
                }
                if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err()
                {
                    break;
                }
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        return Ok(response);
    }
    let method = request.method().to_string();
    let path = request.uri().path_and_query().map(ToString::to_string).unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (name.to_string(), serde_json::Value::from(String::from_utf8_lossy(value.as_bytes())))
        })
        .collect();
    let body_bytes = match request.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    let body = serde_json::json!({
        "port": port,
        "method": method,
        "path": path,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    // An app may not set the daemon's login cookie through the proxy.
    response
        .headers_mut()
        .append("set-cookie", HeaderValue::from_static("wsd_session=from-app; Path=/"));
    response.headers_mut().append("set-cookie", HeaderValue::from_static("app_pref=dark; Path=/"));
    Ok(response)
}
