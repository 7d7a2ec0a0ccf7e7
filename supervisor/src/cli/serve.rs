//! `tollgate serve`'s arguments: where the node configuration is, and the few settings an
//! operator overrides on the command line (the flags win over the file).

use crate::serve::node_config::{self, NodeConfig};
use crate::serve::wire::MetricsListen;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 after a clean shutdown (SIGTERM or SIGINT: running executions \
                  get the configuration's shutdown_grace, then are ended); 1 when a doctor \
                  check fails; 2 for a bad configuration; 125 when the service cannot start."
)]
pub struct ServeArgs {
    /// The node configuration (docs/node-config.md). Without this flag,
    /// /etc/tollgate/node.yaml is read if it exists; if it does not, the defaults apply and
    /// only root may launch.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen on this Unix socket instead of the configuration's `socket.path`. Its
    /// directory must belong to root and be writable by root alone (it is created 0755 if
    /// missing), so that no one else can replace the socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Read team policies (NAME.yaml) from this directory instead of the configuration's
    /// `teams_dir`.
    #[arg(long, value_name = "DIR")]
    pub teams: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics on HOST:PORT or unix:/PATH instead of the
    /// configuration's `metrics`.
    #[arg(long, value_name = "ADDR", value_parser = MetricsListen::parse)]
    pub metrics: Option<MetricsListen>,
    /// Validate the configuration (with these flags applied) and exit: 0 when it is valid,
    /// 2 with the error otherwise.
    #[arg(long)]
    pub check_config: bool,
    /// Print the JSON Schema of the node configuration file and exit.
    #[arg(long, conflicts_with = "check_config")]
    pub print_schema: bool,
}

impl ServeArgs {
    /// The configuration these arguments ask for: the file (or the defaults when the
    /// default file does not exist), then the flags over it.
    pub fn config(&self) -> Result<NodeConfig, String> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::load(path)?,
            None if !Path::new(node_config::DEFAULT_PATH).exists() => NodeConfig::default(),
            None => NodeConfig::load(Path::new(node_config::DEFAULT_PATH))?,
        };
        if let Some(socket) = &self.socket {
            if !socket.is_absolute() {
                return Err(format!(
                    "--socket {}: give an absolute path",
                    socket.display()
                ));
            }
            config.socket.path = socket.clone();
        }
        if let Some(teams) = &self.teams {
            config.teams_dir = teams.clone();
        }
        if let Some(metrics) = &self.metrics {
            config.metrics = Some(metrics.clone());
        }
        Ok(config)
    }

    /// The name the configuration is reported under.
    pub fn config_name(&self) -> String {
        match &self.config {
            Some(path) => path.display().to_string(),
            None if !Path::new(node_config::DEFAULT_PATH).exists() => {
                format!("{} (absent: the defaults)", node_config::DEFAULT_PATH)
            }
            None => node_config::DEFAULT_PATH.to_owned(),
        }
    }
}
