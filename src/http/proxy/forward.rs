//! Forwarding to a workspace app: hyper-util's pooled client over a connector that counts
//! open upstream connections per address (`activity::Tracker`), header rewriting at the
//! trust boundary, metered streaming bodies, and the WebSocket (upgrade) tunnel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntCounter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::activity::{Tracker, UpstreamGuard};
use crate::http::HttpResponse;

/// Time to open a connection to an app.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time from the request to the app's response head.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle pooled connections to apps are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The proxy's client (one per daemon; cheap to clone).
#[derive(Clone)]
pub struct Upstream {
    client: hyper_util::client::legacy::Client<Connector, Metered<Incoming>>,
}

impl Upstream {
    pub fn new(tracker: Arc<Tracker>) -> Upstream {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(8)
            .build(Connector { http, tracker });
        Upstream { client }
    }

    /// Sends `request` (its URI already absolute) and waits for the response head.
    pub async fn send(
        &self,
        request: Request<Metered<Incoming>>,
    ) -> Result<Response<Incoming>, String> {
        match tokio::time::timeout(RESPONSE_TIMEOUT, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(crate::error::error_chain(&error)),
            Err(_) => Err(format!("no response within {}s", RESPONSE_TIMEOUT.as_secs())),
        }
    }
}

/// `HttpConnector`, each connection counted until it closes.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    tracker: Arc<Tracker>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = Counted;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let address = uri.authority().map(ToString::to_string).unwrap_or_default();
        let connecting = self.http.call(uri);
        let tracker = Arc::clone(&self.tracker);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(Counted { io, _guard: tracker.upstream_opened(&address) })
        })
    }
}

/// An upstream connection; counted while it exists.
struct Counted {
    io: TokioIo<TcpStream>,
    _guard: UpstreamGuard,
}

impl Read for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// A body passed through, its data bytes counted.
pub struct Metered<B> {
    inner: B,
    bytes: IntCounter,
}

impl<B> Metered<B> {
    pub fn new(inner: B, bytes: IntCounter) -> Self {
        Metered { inner, bytes }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The app's response as the client gets it: hop-by-hop headers and any attempt to set
/// the daemon's login cookie removed, the body streamed and counted.
pub fn response_to_client(response: Response<Incoming>, bytes: IntCounter) -> HttpResponse {
    let (mut parts, body) = response.into_parts();
    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let cookies: Vec<HeaderValue> = parts
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|value| !sets_cookie(value, crate::http::page::COOKIE_NAME))
        .cloned()
        .collect();
    parts.headers.remove(header::SET_COOKIE);
    for cookie in cookies {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    Response::from_parts(parts, Metered::new(body, bytes).boxed())
}

fn sets_cookie(value: &HeaderValue, name: &str) -> bool {
    let text = String::from_utf8_lossy(value.as_bytes());
    text.split_once('=').is_some_and(|(cookie, _)| cookie.trim() == name)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones `Connection` names; `upgrade` keeps
/// `Connection: upgrade` and `Upgrade` (a WebSocket handshake passes through).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && *name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Whether a request asks to switch protocols (a WebSocket handshake).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The `Cookie` header without the daemon's login cookie (`None`: nothing left).
pub fn cookies_without(headers: &HeaderMap, name: &str) -> Option<HeaderValue> {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(*pair, |(cookie, _)| cookie) != name)
        .map(str::to_owned)
        .collect();
    if kept.is_empty() { None } else { HeaderValue::from_str(&kept.join("; ")).ok() }
}

/// What the tunnel reports while it is open.
pub struct TunnelHooks {
    pub to_workspace: IntCounter,
    pub from_workspace: IntCounter,
    /// Called when data flows (either way), at most once a read.
    pub on_data: Box<dyn Fn() + Send + Sync>,
}

/// Relays bytes both ways between the client's and the app's upgraded connections until
/// either side closes. Returns the bytes relayed (to the app, from the app).
pub async fn tunnel(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    hooks: TunnelHooks,
) -> (u64, u64) {
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let hooks = Arc::new(hooks);
    let up = relay(client_read, upstream_write, Arc::clone(&hooks), true);
    let down = relay(upstream_read, client_write, hooks, false);
    // A side that stops sending has its peer's write side shut down; the tunnel ends
    // when both directions have.
    tokio::join!(up, down)
}

async fn relay(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    hooks: Arc<TunnelHooks>,
    to_workspace: bool,
) -> u64 {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if to.write_all(&buffer[..read]).await.is_err() || to.flush().await.is_err() {
            break;
        }
        total += read as u64;
        if to_workspace { &hooks.to_workspace } else { &hooks.from_workspace }.inc_by(read as u64);
        (hooks.on_data)();
    }
    let _ = to.shutdown().await;
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("accept", "text/html"),
        ]);
        strip_hop_by_hop(&mut map, false);
        let names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept"]);
    }

    #[test]
    fn an_upgrade_keeps_its_handshake_headers() {
        let mut map = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&map));
        strip_hop_by_hop(&mut map, true);
        assert_eq!(map.get("upgrade").unwrap(), "websocket");
        assert_eq!(map.get("connection").unwrap(), "upgrade");
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn the_login_cookie_never_reaches_the_app() {
        let map = headers(&[("cookie", "a=1; wsd_session=secret"), ("cookie", "b=2")]);
        assert_eq!(cookies_without(&map, "wsd_session").unwrap(), "a=1; b=2");
        assert_eq!(cookies_without(&headers(&[("cookie", "wsd_session=x")]), "wsd_session"), None);
        let set = HeaderValue::from_static("wsd_session=evil; Path=/");
        assert!(sets_cookie(&set, "wsd_session"));
        assert!(!sets_cookie(&HeaderValue::from_static("theme=dark"), "wsd_session"));
    }
}
