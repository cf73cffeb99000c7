//! Probes and lifecycle handlers: one check of an `exec`, `httpGet` or `tcpSocket` action.
//!
//! `exec` runs in the container (`runc exec`), killed at the timeout. `httpGet` and
//! `tcpSocket` connect from the agent's network namespace (the cell's) to the pod IP, as
//! the kubelet connects from the node: the cell routes to its pod, while the pod cannot
//! reach the agent. HTTP success is a status from 200 to 399; redirects are not followed
//! (the kubelet counts a redirect to another host as success too); HTTPS certificates are
//! not verified, as by the kubelet.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::runc::Runc;

/// The kubelet's defaults for unset probe fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(probe: &Probe) -> Self {
        let seconds = |value: Option<i32>, default: u64| {
            Duration::from_secs(value.map_or(default, |v| v.max(0) as u64))
        };
        Timing {
            initial_delay: seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.map_or(1, |v| v.max(1) as u32),
            failure_threshold: probe.failure_threshold.map_or(3, |v| v.max(1) as u32),
        }
    }
}

/// What a check is run against.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub runc: &'a Runc,
    /// The runc ID of the container run.
    pub id: &'a str,
    pub pod_ip: Ipv4Addr,
    pub container: &'a Container,
}

/// The handler of a probe or lifecycle hook.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    Exec(&'a ExecAction),
    Http(&'a HTTPGetAction),
    Tcp(&'a TCPSocketAction),
}

impl<'a> Action<'a> {
    /// The action of a probe; `Err` names what it has instead (gRPC, nothing).
    pub fn of_probe(probe: &'a Probe) -> Result<Self, String> {
        if let Some(exec) = &probe.exec {
            Ok(Action::Exec(exec))
        } else if let Some(http) = &probe.http_get {
            Ok(Action::Http(http))
        } else if let Some(tcp) = &probe.tcp_socket {
            Ok(Action::Tcp(tcp))
        } else if probe.grpc.is_some() {
            Err("gRPC probes are not supported by cellet-agent".to_string())
        } else {
            Err("the probe has no handler".to_string())
        }
    }
}

/// Run `action` once; `Err` says why it failed.
pub async fn check(
    action: Action<'_>,
    target: Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    match action {
        Action::Exec(exec) => {
            let argv = exec.command.clone().unwrap_or_default();
            match target.runc.exec(target.id, &argv, timeout).await {
                Ok(Some(status)) if status.success() => Ok(()),
                Ok(Some(status)) => Err(format!("command {argv:?} exited with {status}")),
                Ok(None) => Err(format!("command {argv:?} timed out after {timeout:?}")),
                Err(error) => Err(error.to_string()),
            }
        }
        Action::Http(http) => {
            let port = resolve_port(&http.port, target.container)?;
            let host = http
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| target.pod_ip.to_string());
            let scheme = http
                .scheme
                .as_deref()
                .unwrap_or("HTTP")
                .to_ascii_lowercase();
            let path = http.path.as_deref().unwrap_or("/");
            let path = if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/{path}")
            };
            let url = format!("{scheme}://{}:{port}{path}", bracket(&host));
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .danger_accept_invalid_certs(true)
                .user_agent("kube-probe/cellet")
                .build()
                .map_err(|e| format!("HTTP client: {e}"))?;
            let mut request = client.get(&url);
            for header in http.http_headers.iter().flatten() {
                request = request.header(header.name.as_str(), header.value.as_str());
            }
            let response = request
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status().as_u16();
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("GET {url}: HTTP status {status}"))
            }
        }
        Action::Tcp(tcp) => {
            let port = resolve_port(&tcp.port, target.container)?;
            let ip = match tcp.host.as_deref().filter(|h| !h.is_empty()) {
                Some(host) => host
                    .parse::<IpAddr>()
                    .map_err(|_| format!("tcpSocket host {host:?} is not an IP address"))?,
                None => IpAddr::V4(target.pod_ip),
            };
            let address = SocketAddr::new(ip, port);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("dial tcp {address}: {error}")),
                Err(_) => Err(format!("dial tcp {address}: timed out after {timeout:?}")),
            }
        }
    }
}

/// A probe port: a number, or the name of one of the container's ports.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| {
                    format!("container {:?} has no port named {name:?}", container.name)
                })?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {number} is out of range"))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_the_kubelet_defaults() {
        let timing = Timing::of(&Probe::default());
        assert_eq!(timing.period, Duration::from_secs(10));
        assert_eq!(timing.timeout, Duration::from_secs(1));
        assert_eq!((timing.success_threshold, timing.failure_threshold), (1, 3));
        assert_eq!(timing.initial_delay, Duration::ZERO);
    }

    #[test]
    fn named_ports_resolve_through_the_container() {
        let container = Container {
            name: "web".into(),
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &container),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::Int(81), &container), Ok(81));
        assert!(resolve_port(&IntOrString::String("grpc".into()), &container).is_err());
    }

    #[tokio::test]
    async fn tcp_checks_connect_to_the_pod_ip() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let container = Container::default();
        let runc = Runc::new("/nonexistent".into());
        let target = Target {
            runc: &runc,
            id: "x",
            pod_ip: Ipv4Addr::LOCALHOST,
            container: &container,
        };
        let open = TCPSocketAction {
            port: IntOrString::Int(port as i32),
            host: None,
        };
        assert_eq!(
            check(Action::Tcp(&open), target, Duration::from_secs(1)).await,
            Ok(())
        );
        drop(listener);
        assert!(
            check(Action::Tcp(&open), target, Duration::from_secs(1))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn http_checks_succeed_below_400_and_fail_above() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 1024];
                let n = stream.read(&mut request).await.unwrap();
                let path_ok = String::from_utf8_lossy(&request[..n]).starts_with("GET /healthz ");
                let status = if path_ok { "200 OK" } else { "404 Not Found" };
                let response =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                stream.write_all(response.as_bytes()).await.unwrap();
            }
        });
        let container = Container::default();
        let runc = Runc::new("/nonexistent".into());
        let target = Target {
            runc: &runc,
            id: "x",
            pod_ip: Ipv4Addr::LOCALHOST,
            container: &container,
        };
        let get = |path: &str| HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port as i32),
            ..Default::default()
        };
        assert_eq!(
            check(
                Action::Http(&get("/healthz")),
                target,
                Duration::from_secs(2)
            )
            .await,
            Ok(())
        );
        let missing = check(Action::Http(&get("/nope")), target, Duration::from_secs(2)).await;
        assert!(missing.is_err_and(|e| e.contains("404")));
    }
}
