//! The bootstrap document of a cell: what its agent starts from, written into the cell's
//! user data (`CellRequest.user_data`) before the cloud creates the cell.

use std::path::PathBuf;

use cellet_agent::protocol::{
    AGENT_PORT, Bootstrap, BootstrapError, DEFAULT_MANAGEMENT_INTERFACE, DEFAULT_STATE_DIR,
    PROTOCOL_VERSION,
};

use super::ca::{CaError, CellCa};

/// What every cell's agent is told besides its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSettings {
    /// The cell's management interface (the agent listens on its IPv4 address).
    pub management_interface: String,
    /// The agent's port.
    pub port: u16,
    /// The directory under which each agent keeps its state, in a subdirectory named after
    /// its pod UID (cells that share a filesystem, like local cells, never share state).
    pub state_root: PathBuf,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        BootstrapSettings {
            management_interface: DEFAULT_MANAGEMENT_INTERFACE.to_string(),
            port: AGENT_PORT,
            state_root: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

/// Errors of building a bootstrap document.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapBuildError {
    /// The agent's certificate could not be issued.
    #[error(transparent)]
    Certificate(#[from] CaError),
    /// The document could not be written (or is too large for user data).
    #[error("failed to write the bootstrap document of pod {pod_uid}: {source}")]
    Document {
        pod_uid: String,
        source: BootstrapError,
    },
}

/// The bootstrap document (JSON) of the cell of pod `pod_uid`, with a serving certificate
/// freshly issued by `ca`.
pub fn bootstrap_document(
    ca: &CellCa,
    pod_uid: &str,
    settings: &BootstrapSettings,
) -> Result<String, BootstrapBuildError> {
    let issued = ca.issue_agent_cert(pod_uid)?;
    let bootstrap = Bootstrap {
        version: PROTOCOL_VERSION,
        pod_uid: pod_uid.to_string(),
        server_cert_pem: issued.cert_pem,
        server_key_pem: issued.key_pem,
        client_ca_pem: ca.cert_pem().to_string(),
        management_interface: settings.management_interface.clone(),
        port: settings.port,
        state_dir: settings.state_root.join(pod_uid),
    };
    bootstrap
        .to_json()
        .map_err(|source| BootstrapBuildError::Document {
            pod_uid: pod_uid.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_what_the_agent_accepts_and_fits_in_user_data() {
        let ca = CellCa::generate().unwrap();
        let settings = BootstrapSettings {
            state_root: "/var/lib/cellet/cells".into(),
            ..BootstrapSettings::default()
        };
        let text = bootstrap_document(&ca, "0b1c-22", &settings).unwrap();
        // EC2 takes 16 KiB of user data on every launch path.
        assert!(text.len() < 16 * 1024, "{} bytes", text.len());
        let parsed = Bootstrap::from_json(text.as_bytes()).unwrap();
        assert_eq!(parsed.pod_uid, "0b1c-22");
        assert_eq!(parsed.client_ca_pem, ca.cert_pem());
        assert_eq!(
            parsed.state_dir,
            PathBuf::from("/var/lib/cellet/cells/0b1c-22")
        );
        assert_eq!(
            (parsed.management_interface.as_str(), parsed.port),
            ("eth0", AGENT_PORT)
        );
    }
}
