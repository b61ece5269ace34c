//! The CLI's client of a running daemon's API: the address from the config
//! (`server.listen`, or `--url`/`WORKSPACED_URL`), the token from `WORKSPACED_TOKEN` or a
//! token file. Calls are JSON over HTTP/1.1; a followed build log is read line by line as
//! the daemon streams it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::CliError;
use crate::config::Config;

/// How long one call may take (a followed log may take as long as its build).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Remote {
    base: String,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Runtime,
}

/// Where the daemon of `config` answers: its listen address, with an unspecified IP
/// (`0.0.0.0`, `::`) replaced by loopback.
fn local_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

fn read_token(token_file: Option<&Path>) -> Result<String, CliError> {
    if let Ok(token) = std::env::var("WORKSPACED_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_owned());
    }
    let Some(path) = token_file else {
        return Err(CliError::Input(
            "no API token: set WORKSPACED_TOKEN or pass --token-file PATH \
             (issue one with `workspaced token create --user NAME`)"
                .to_owned(),
        ));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::Input(format!("--token-file {}: {error}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CliError::Input(format!("--token-file {}: the file is empty", path.display())));
    }
    Ok(token.to_owned())
}

impl Remote {
    pub fn connect(
        config: &Config,
        url: Option<&str>,
        token_file: Option<&Path>,
    ) -> Result<Remote, CliError> {
        let token = read_token(token_file)?;
        let base = match url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if config.server.listen.port() == 0 => {
                return Err(CliError::Input(
                    "server.listen has port 0 (a port picked at start): pass --url http://HOST:PORT"
                        .to_owned(),
                ));
            }
            None => local_url(config.server.listen),
        };
        if !base.starts_with("http://") {
            return Err(CliError::Input(format!(
                "--url {base:?}: use http://HOST:PORT (the daemon speaks plain HTTP; put TLS in front of it)"
            )));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        let client = {
            let _guard = runtime.enter();
            Client::builder(TokioExecutor::new()).build_http()
        };
        Ok(Remote { base, token, client, runtime })
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<hyper::Request<Full<Bytes>>, CliError> {
        let body = body.map(Value::to_string).unwrap_or_default();
        hyper::Request::builder()
            .method(method)
            .uri(format!("{}/api/v1{path}", self.base))
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| CliError::Input(format!("bad request path {path:?}: {error}")))
    }

    fn unreachable(&self, reason: String) -> CliError {
        CliError::Unreachable { url: self.base.clone(), reason }
    }

    /// Sends a request and waits for the answer's head (bounded by `CALL_TIMEOUT`).
    async fn send(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, CliError> {
        tokio::time::timeout(CALL_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| self.unreachable(format!("no answer within {CALL_TIMEOUT:?}")))?
            .map_err(|error| self.unreachable(crate::error::error_chain(&error)))
    }

    /// `method path` with a JSON body; the answer's JSON, or the API's error.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let request = self.request(method, path, body.as_ref())?;
        self.runtime.block_on(async {
            let response = self.send(request).await?;
            let status = response.status();
            let bytes = tokio::time::timeout(CALL_TIMEOUT, response.into_body().collect())
                .await
                .map_err(|_| self.unreachable("the answer did not finish".to_owned()))?
                .map_err(|error| self.unreachable(crate::error::error_chain(&error)))?
                .to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_success() { Ok(value) } else { Err(api_error(status.as_u16(), &value)) }
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call("GET", path, None)
    }

    /// Reads a JSON-lines stream (a followed build log), calling `line` for each line,
    /// until the daemon ends it.
    pub fn follow(&self, path: &str, mut line: impl FnMut(Value)) -> Result<(), CliError> {
        let request = self.request("GET", path, None)?;
        self.runtime.block_on(async {
            let response = self.send(request).await?;
            let status = response.status();
            let mut body = response.into_body();
            if !status.is_success() {
                let bytes = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                return Err(api_error(status.as_u16(), &value));
            }
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|error| self.unreachable(crate::error::error_chain(&error)))?;
                let Ok(data) = frame.into_data() else { continue };
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
                    let text: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(value) = serde_json::from_slice::<Value>(&text) {
                        line(value);
                    }
                }
            }
            Ok(())
        })
    }
}

fn api_error(status: u16, body: &Value) -> CliError {
    let message = body["error"].as_str().unwrap_or("no error message").to_owned();
    let field = body["field"].as_str().map(str::to_owned);
    CliError::Api { status, message, field }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        assert_eq!(local_url("0.0.0.0:2118".parse().unwrap()), "http://127.0.0.1:2118");
        assert_eq!(local_url("[::]:2118".parse().unwrap()), "http://[::1]:2118");
        assert_eq!(local_url("10.0.0.5:80".parse().unwrap()), "http://10.0.0.5:80");
    }
}
