//! `cellet local-cells down`: remove the local VPC of a config's `local-cells` cloud, with
//! every cell in it. `cellet run` never tears the VPC down (cells outlive the host, as
//! instances outlive a cloud controller); this is the explicit way, for demos and tests.

use std::path::Path;

use cellet::config::{Config, ConfigError};
use cellet::plugins::capabilities::local_cells::{
    LocalCellsCapability, LocalCellsError, LocalCellsMetrics,
};

/// Errors of `cellet local-cells down`.
#[derive(Debug, thiserror::Error)]
pub enum DownError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config's cloud slot is not granted `local-cells`.
    #[error("{path}: the cloud slot is not granted `local-cells`: there is no local VPC to remove")]
    NotLocalCells { path: String },
    #[error("failed to remove the local-cells VPC: {0}")]
    TearDown(#[from] LocalCellsError),
}

pub async fn down(config_path: &Path) -> Result<(), DownError> {
    let config = Config::load(config_path)?;
    let settings = config
        .cloud
        .local_cells
        .clone()
        .ok_or_else(|| DownError::NotLocalCells {
            path: config_path.display().to_string(),
        })?;
    let vpc = settings.vpc_namespace.clone();
    let capability = LocalCellsCapability::new(
        &config.cloud.spec.name,
        settings,
        LocalCellsMetrics::default(),
    );
    let cells = capability
        .list()
        .await
        .map(|cells| cells.len())
        .unwrap_or_default();
    capability.tear_down().await?;
    println!("removed the local-cells VPC {vpc} and its {cells} cell(s)");
    Ok(())
}
