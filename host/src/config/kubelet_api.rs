//! The `kubelet-api:` section: the kubelet API (HTTPS, `node.kubelet-port`) and the plain
//! metrics address (`/metrics`, `/healthz`, `/readyz`).
//!
//! Without the section neither is served (and `cellet run` says so in its log): the API
//! needs certificates that cannot be guessed, and a metrics port opened by default would
//! collide between two hosts on one machine.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::yaml::{Field, Reader};
use super::{NodeConfig, optional};
use crate::api::{ServingCert, TlsSettings};

const KEYS: &[&str] = &[
    "enabled",
    "listen-address",
    "serving-cert",
    "serving-key",
    "ca-cert",
    "ca-key",
    "client-ca-file",
    "metrics-address",
];

/// The metrics address by default: loopback only, since it is served without
/// authentication (10255 is the kubelet's former read-only port).
pub const DEFAULT_METRICS_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 10255);

/// The `kubelet-api:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletApiConfig {
    /// The kubelet API's socket and certificates; `None` with `enabled: false`.
    pub api: Option<KubeletApiListener>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served over plain HTTP.
    pub metrics_address: SocketAddr,
}

/// Where and how the kubelet API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletApiListener {
    /// `listen-address` (default: `node.internal-ip`) and `node.kubelet-port`: the port is
    /// the one the Node advertises, so it is written in one place only.
    pub address: SocketAddr,
    pub tls: TlsSettings,
}

pub(super) fn kubelet_api(
    reader: &mut Reader,
    field: &Field<'_, '_>,
    node: Option<&NodeConfig>,
    base_dir: &Path,
) -> Option<KubeletApiConfig> {
    let section = reader.section(field, KEYS);
    let enabled = optional(reader, &section, "enabled", |reader, f| reader.boolean(f));
    let path = |reader: &mut Reader, key: &str| {
        optional(reader, &section, key, |reader, f| {
            reader.string(f).map(|p| base_dir.join(p))
        })
    };
    let serving_cert = path(reader, "serving-cert");
    let serving_key = path(reader, "serving-key");
    let ca_cert = path(reader, "ca-cert");
    let ca_key = path(reader, "ca-key");
    let client_ca = path(reader, "client-ca-file");
    let listen_ip = optional(reader, &section, "listen-address", |reader, f| {
        let text = reader.string(f)?;
        text.parse::<IpAddr>().ok().or_else(|| {
            let hint = if text.parse::<SocketAddr>().is_ok() {
                " (write the address only: the port is node.kubelet-port, the one the Node advertises)"
            } else {
                ""
            };
            reader.report(f.line, &f.path, format!("`{text}` is not an IP address{hint}"));
            None
        })
    });
    let metrics_address = optional(reader, &section, "metrics-address", |reader, f| {
        let text = reader.string(f)?;
        text.parse::<SocketAddr>().ok().or_else(|| {
            reader.report(
                f.line,
                &f.path,
                format!("`{text}` is not an address and port (e.g. 127.0.0.1:10255)"),
            );
            None
        })
    });

    let metrics_address = metrics_address?.unwrap_or(DEFAULT_METRICS_ADDRESS);
    let enabled = enabled?.unwrap_or(true);
    let (serving_cert, serving_key, ca_cert, ca_key, client_ca, listen_ip) = (
        serving_cert?,
        serving_key?,
        ca_cert?,
        ca_key?,
        client_ca?,
        listen_ip?,
    );
    if !enabled {
        return Some(KubeletApiConfig {
            api: None,
            metrics_address,
        });
    }
    let serving = match (serving_cert, serving_key, ca_cert, ca_key) {
        (Some(cert), Some(key), None, None) => Some(ServingCert::Files { cert, key }),
        (None, None, Some(ca_cert), Some(ca_key)) => {
            Some(ServingCert::IssueFrom { ca_cert, ca_key })
        }
        (None, None, None, None) => {
            reader.report(
                field.line,
                &field.path,
                "no serving certificate: give `serving-cert` and `serving-key`, or `ca-cert` and `ca-key` to issue one at start (or `enabled: false`)",
            );
            None
        }
        (cert, key, ca_cert, ca_key) => {
            let files = cert.is_some() || key.is_some();
            let ca = ca_cert.is_some() || ca_key.is_some();
            let (line, message) = if files && ca {
                (
                    section.line_of("ca-cert").max(section.line_of("ca-key")),
                    "give either `serving-cert`/`serving-key` or `ca-cert`/`ca-key`, not both",
                )
            } else if files {
                (
                    section.line_of(if cert.is_some() {
                        "serving-cert"
                    } else {
                        "serving-key"
                    }),
                    "`serving-cert` and `serving-key` go together",
                )
            } else {
                (
                    section.line_of(if ca_cert.is_some() {
                        "ca-cert"
                    } else {
                        "ca-key"
                    }),
                    "`ca-cert` and `ca-key` go together",
                )
            };
            reader.report(line, &field.path, message);
            None
        }
    };
    let client_ca = client_ca.or_else(|| {
        reader.report(
            field.line,
            section.path_of("client-ca-file"),
            "missing (required): the CA of the API server's client certificate (its --kubelet-client-certificate)",
        );
        None
    });
    let node = node?;
    let address = SocketAddr::new(listen_ip.unwrap_or(node.internal_ip), node.kubelet_port);
    Some(KubeletApiConfig {
        api: Some(KubeletApiListener {
            address,
            tls: TlsSettings {
                serving: serving?,
                client_ca: client_ca?,
            },
        }),
        metrics_address,
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::parse;

    const BASE: &str = "\
node: {name: n, controller-id: c, internal-ip: 10.0.0.7, kubelet-port: 10260}
cloud: {source: c.wasm}
network: {source: n.wasm}
hostport: {source: h.wasm}
";

    fn problems(text: &str) -> Vec<String> {
        parse(Path::new("cellet.yaml"), text)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn defaults_listen_on_the_internal_ip_and_metrics_on_loopback() {
        let text = format!(
            "{BASE}kubelet-api:\n  ca-cert: pki/ca.crt\n  ca-key: pki/ca.key\n  client-ca-file: pki/ca.crt\n"
        );
        let config = parse(Path::new("/etc/cellet/cellet.yaml"), &text)
            .into_config()
            .unwrap();
        let api = config.kubelet_api.unwrap();
        assert_eq!(api.metrics_address, DEFAULT_METRICS_ADDRESS);
        let listener = api.api.unwrap();
        assert_eq!(listener.address, "10.0.0.7:10260".parse().unwrap());
        assert_eq!(
            listener.tls,
            TlsSettings {
                serving: ServingCert::IssueFrom {
                    ca_cert: PathBuf::from("/etc/cellet/pki/ca.crt"),
                    ca_key: PathBuf::from("/etc/cellet/pki/ca.key")
                },
                client_ca: PathBuf::from("/etc/cellet/pki/ca.crt"),
            }
        );
        assert!(
            parse(Path::new("c.yaml"), BASE)
                .into_config()
                .unwrap()
                .kubelet_api
                .is_none()
        );
    }

    #[test]
    fn disabled_keeps_the_metrics_address() {
        let text =
            format!("{BASE}kubelet-api: {{enabled: false, metrics-address: \"127.0.0.1:0\"}}\n");
        let api = parse(Path::new("c.yaml"), &text)
            .into_config()
            .unwrap()
            .kubelet_api
            .unwrap();
        assert_eq!(
            api,
            KubeletApiConfig {
                api: None,
                metrics_address: "127.0.0.1:0".parse().unwrap()
            }
        );
    }

    #[test]
    fn certificates_are_one_pair_or_the_other_and_the_client_ca_is_required() {
        let text = format!(
            "{BASE}kubelet-api:
  listen-address: 0.0.0.0:10250
  serving-cert: k.crt
  ca-cert: ca.crt
  ca-key: ca.key
"
        );
        assert_eq!(
            problems(&text),
            vec![
                "cellet.yaml:6: kubelet-api.listen-address: `0.0.0.0:10250` is not an IP address (write the address only: the port is node.kubelet-port, the one the Node advertises)",
            ]
        );
        let text = format!(
            "{BASE}kubelet-api:\n  serving-cert: k.crt\n  ca-cert: ca.crt\n  ca-key: ca.key\n"
        );
        assert_eq!(
            problems(&text),
            vec![
                "cellet.yaml:5: kubelet-api.client-ca-file: missing (required): the CA of the API server's client certificate (its --kubelet-client-certificate)",
                "cellet.yaml:8: kubelet-api: give either `serving-cert`/`serving-key` or `ca-cert`/`ca-key`, not both",
            ]
        );
        let text =
            format!("{BASE}kubelet-api:\n  client-ca-file: ca.crt\n  metrics-address: nowhere\n");
        assert_eq!(
            problems(&text),
            vec![
                "cellet.yaml:7: kubelet-api.metrics-address: `nowhere` is not an address and port (e.g. 127.0.0.1:10255)"
            ]
        );
        let text = format!("{BASE}kubelet-api:\n  client-ca-file: ca.crt\n");
        assert_eq!(
            problems(&text),
            vec![
                "cellet.yaml:5: kubelet-api: no serving certificate: give `serving-cert` and `serving-key`, or `ca-cert` and `ca-key` to issue one at start (or `enabled: false`)"
            ]
        );
    }
}
