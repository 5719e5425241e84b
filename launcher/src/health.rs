//! Readiness probes: gRPC health (`grpc.health.v1`, what every tgrpo service serves) and
//! NATS's greeting (an `INFO` line that says whether JetStream is on).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// One gRPC health check of `address` for `service` ("" = the whole server).
pub async fn grpc_status(
    address: &str,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(normalize_endpoint(address))
        .map_err(|err| format!("{address} is not an endpoint: {err}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|err| format!("cannot connect to {address}: {}", error_chain(&err)))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|status| format!("{address}: health check failed: {}", status.message()))?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// `host:port` → `http://host:port`; URLs are kept.
pub fn normalize_endpoint(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// The error and its sources, `: `-joined (tonic's transport errors hide the cause).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// What a NATS server says when a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsGreeting {
    /// The server's version.
    pub version: String,
    /// JetStream is enabled.
    pub jetstream: bool,
    /// The largest message it takes.
    pub max_payload: u64,
}

/// Connects to a NATS server at `address` (`host:port`) and reads its `INFO` line.
pub async fn nats_greeting(address: SocketAddr, timeout: Duration) -> Result<NatsGreeting, String> {
    let read = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|err| format!("cannot connect to nats at {address}: {err}"))?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(|err| format!("nats at {address}: {err}"))?;
        parse_info(&line)
            .ok_or_else(|| format!("{address} did not greet like a NATS server: {line:?}"))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| format!("nats at {address}: no greeting within {timeout:?}"))?
}

fn parse_info(line: &str) -> Option<NatsGreeting> {
    let json = line.trim().strip_prefix("INFO")?.trim();
    let info: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(NatsGreeting {
        version: info["version"].as_str().unwrap_or("?").to_string(),
        jetstream: info["jetstream"].as_bool().unwrap_or(false),
        max_payload: info["max_payload"].as_u64().unwrap_or(0),
    })
}

/// The `host:port` of a `nats://host:port` URL (the first one of a comma-separated list).
pub fn nats_socket_address(url: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    let first = url.split(',').next()?.trim();
    let rest = first.split_once("://").map_or(first, |(_, rest)| rest);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host_port = host_port.trim_end_matches('/');
    let with_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:4222")
    };
    with_port.to_socket_addrs().ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lines_parse() {
        let greeting = parse_info(
            "INFO {\"server_id\":\"X\",\"version\":\"2.9.10\",\"max_payload\":1048576,\"jetstream\":true} \r\n",
        )
        .unwrap();
        assert_eq!(
            greeting,
            NatsGreeting {
                version: "2.9.10".into(),
                jetstream: true,
                max_payload: 1_048_576
            }
        );
        assert!(!parse_info("INFO {\"version\":\"2\"}").unwrap().jetstream);
        assert_eq!(parse_info("HTTP/1.1 400 Bad Request"), None);
    }

    #[test]
    fn nats_urls_give_socket_addresses() {
        let addr = |url: &str| nats_socket_address(url).map(|addr| addr.to_string());
        assert_eq!(
            addr("nats://127.0.0.1:4999").as_deref(),
            Some("127.0.0.1:4999")
        );
        assert_eq!(
            addr("nats://user:pw@127.0.0.1:5000,nats://x:1").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(addr("127.0.0.1").as_deref(), Some("127.0.0.1:4222"));
        assert_eq!(normalize_endpoint("a:1"), "http://a:1");
        assert_eq!(normalize_endpoint("https://a:1"), "https://a:1");
    }
}
