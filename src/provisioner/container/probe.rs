//! Readiness probes, run by workspaced itself (engine HEALTHCHECKs do not run under
//! Podman without systemd): an HTTP GET that must answer 2xx/3xx, a TCP connect, or a
//! command inside the container that must exit 0. One check answers `Ok` or the reason.

use std::collections::HashMap;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::container::{ContainerSpec, ProbeCheck, ProbeSpec};
use crate::provisioner::container::engine::{ContainerInfo, Engine};

/// The published `host:port` of each named port of `spec`, from the container's state.
pub fn addresses(spec: &ContainerSpec, info: &ContainerInfo) -> HashMap<String, String> {
    spec.ports
        .iter()
        .filter_map(|(name, port)| Some((name.clone(), info.published.get(port)?.clone())))
        .collect()
}

/// `http://{port.web}/healthz` with the addresses filled in; `None` names a port that is
/// not published.
fn expand_url(url: &str, addresses: &HashMap<String, String>) -> Result<String, String> {
    let mut out = url.to_owned();
    for name in crate::config::container::port_references(url) {
        let address = addresses
            .get(name)
            .ok_or_else(|| format!("port {name:?} is not published by the container"))?;
        out = out.replace(&format!("{{port.{name}}}"), address);
    }
    Ok(out)
}

/// Runs the probe's check once.
pub async fn check_once(
    engine: &Engine,
    container: &str,
    probe: &ProbeSpec,
    addresses: &HashMap<String, String>,
) -> Result<(), String> {
    let timeout = probe.timeout.as_duration();
    let Some(check) = probe.check() else { return Err("the probe declares no check".to_owned()) };
    let run = async {
        match check {
            ProbeCheck::Http(url) => http(&expand_url(&url, addresses)?).await,
            ProbeCheck::Tcp(port) => {
                let address = addresses
                    .get(&port)
                    .ok_or_else(|| format!("port {port:?} is not published by the container"))?;
                tokio::net::TcpStream::connect(address)
                    .await
                    .map(drop)
                    .map_err(|error| format!("tcp {address}: {error}"))
            }
            ProbeCheck::Exec(command) => match engine.exec(container, &command).await {
                Ok((0, _)) => Ok(()),
                Ok((code, output)) => Err(format!(
                    "exec {:?} exited with {code}{}",
                    command.join(" "),
                    if output.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", output.trim())
                    }
                )),
                Err(error) => Err(error.to_string()),
            },
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => {
            Err(format!("no answer within {}", crate::config::duration::format_duration(timeout)))
        }
    }
}

async fn http(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|error| format!("{url:?} is not a URL: {error}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let response = client.get(uri).await.map_err(|error| {
        let mut message = format!("GET {url}: {error}");
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    })?;
    let status = response.status();
    // Read (and drop) a bounded body so the connection closes cleanly.
    let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024).collect().await;
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {url} answered {status}"))
    }
}

/// How often a start build checks while it waits for readiness (until the probe passes,
/// or the job's time is up): every second, or every interval when that is shorter.
pub fn start_interval(probe: &ProbeSpec) -> Duration {
    probe.interval.as_duration().min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_published_addresses() {
        let addresses = HashMap::from([("web".to_owned(), "127.0.0.1:4000".to_owned())]);
        assert_eq!(
            expand_url("http://{port.web}/healthz", &addresses).as_deref(),
            Ok("http://127.0.0.1:4000/healthz")
        );
        assert!(expand_url("http://{port.api}/", &addresses).unwrap_err().contains("\"api\""));
    }

    #[test]
    fn a_start_checks_every_second_or_every_shorter_interval() {
        let probe = |interval: &str| -> ProbeSpec {
            serde_json::from_value(serde_json::json!({ "http": "http://x/", "interval": interval }))
                .unwrap()
        };
        assert_eq!(start_interval(&probe("5s")), Duration::from_secs(1));
        assert_eq!(start_interval(&probe("1s")), Duration::from_secs(1));
    }
}
