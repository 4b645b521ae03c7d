use std::path::PathBuf;

use anyhow::{Context, Result};
use keel_server::{BoundListener, Broker, BrokerConfig};

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Broker settings file: TOML (`.toml`) or Kafka `.properties`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one setting, as Kafka's start script does: `--override log.dirs=/data`.
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let settings = crate::settings::load(args.config.as_deref(), &args.overrides)?;
    let (mut config, unknown) = BrokerConfig::from_properties(settings)?;
    for name in unknown {
        tracing::warn!(name, "ignoring unknown setting");
    }
    let listener = BoundListener::bind(&config)
        .await
        .context("binding the listener")?;
    let bound = listener.local_addr()?;
    if config.advertised_port == 0 {
        config.advertised_port = i32::from(bound.port());
    }
    let broker = tokio::task::spawn_blocking(move || Broker::open(config))
        .await?
        .context("opening the data dir")?;
    // Printed, not just logged: tests and scripts read the bound port here.
    println!("keel listening on {bound}");
    listener.serve(broker).run(shutdown_signal()).await?;
    tracing::info!("clean shutdown");
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
