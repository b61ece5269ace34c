//! A small async HTTP/1.1 client for the API tests: JSON requests with a bearer token, and
//! raw streaming reads for SSE and log follows.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Api {
        Api {
            addr,
            token: token.map(str::to_owned),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn as_user(&self, token: &str) -> Api {
        Api { token: Some(token.to_owned()), ..self.clone() }
    }

    /// Sends `method path` with a raw body (and the bearer token when set); returns status,
    /// headers and the body bytes.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
        with_token: bool,
    ) -> (u16, hyper::HeaderMap, Bytes) {
        let mut request =
            hyper::Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        if let Some(token) = self.token.as_ref().filter(|_| with_token) {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("request timed out")
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, bytes)
    }

    /// Sends `method path` with a raw body; returns status, headers and the JSON body
    /// (`Value::Null` when empty or not JSON).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, hyper::HeaderMap, Value) {
        let (status, headers, bytes) = self.send(method, path, body, headers, true).await;
        (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// `raw` without a body or token, answering the body as text (HTML pages).
    pub async fn raw_text(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, hyper::HeaderMap, String) {
        let (status, headers, bytes) = self.send(method, path, None, headers, false).await;
        (status, headers, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|body| serde_json::to_vec(&body).unwrap());
        let (status, _, value) = self.raw(method, path, body, &[]).await;
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }

    /// Opens a streaming GET; returns the line reader positioned after the headers, and
    /// the status.
    pub async fn stream(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Lines) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.unwrap();
        let status = status_line.split_whitespace().nth(1).unwrap().parse().unwrap();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
        }
        (status, Lines { reader, chunk_left: 0 })
    }
}

/// Lines of a chunked streaming body.
pub struct Lines {
    reader: BufReader<TcpStream>,
    chunk_left: usize,
}

impl Lines {
    /// The next body line (without the newline), `None` at the end of the body.
    pub async fn next_line(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.read_line()).await.expect("no line within the timeout")
    }

    async fn read_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        loop {
            if self.chunk_left == 0 {
                let mut size = String::new();
                self.reader.read_line(&mut size).await.ok()?;
                let size = usize::from_str_radix(size.trim(), 16).ok()?;
                if size == 0 {
                    return None;
                }
                self.chunk_left = size;
            }
            let mut byte = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut self.reader, &mut byte).await.ok()?;
            self.chunk_left -= 1;
            if self.chunk_left == 0 {
                let mut crlf = String::new();
                self.reader.read_line(&mut crlf).await.ok()?;
            }
            if byte[0] == b'\n' {
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            line.push(byte[0]);
        }
    }

    /// The next SSE event as (id, kind, data), skipping comments and `retry:`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<(i64, String, Value)> {
        let (mut id, mut kind, mut data) = (None, None, None);
        loop {
            let line = self.next_line(timeout).await?;
            if line.is_empty() {
                if let (Some(id), Some(kind), Some(data)) = (id, kind.clone(), data.clone()) {
                    return Some((id, kind, data));
                }
                continue;
            }
            if let Some(value) = line.strip_prefix("id: ") {
                id = value.parse().ok();
            } else if let Some(value) = line.strip_prefix("event: ") {
                kind = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("data: ") {
                data = serde_json::from_str(value).ok();
            }
        }
    }
}
