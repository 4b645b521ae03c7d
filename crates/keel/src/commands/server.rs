use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use keel_server::{BoundListener, Broker, BrokerConfig, ControllerNode};

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
    let (config, unknown) = BrokerConfig::from_properties(settings)?;
    for name in unknown {
        tracing::warn!(name, "ignoring unknown setting");
    }
    match config.listener {
        Some(addr) => run_broker(config, addr).await,
        None => run_controller(config).await,
    }
}

async fn run_broker(mut config: BrokerConfig, addr: SocketAddr) -> Result<()> {
    let listener = BoundListener::bind(addr)
        .await
        .context("binding the listener")?;
    let bound = listener.local_addr()?;
    if config.advertised_port == 0 {
        config.advertised_port = i32::from(bound.port());
    }
    let broker = Broker::open(config).await.context("opening the data dir")?;
    // Before the line below: a signal sent as soon as it appears must
    // find the handler installed.
    let shutdown = shutdown_signal()?;
    // Printed, not just logged: tests and scripts read the bound port here.
    println!("keel listening on {bound}");
    listener.serve(broker).run(shutdown).await?;
    tracing::info!("clean shutdown");
    Ok(())
}

/// `process.roles=controller`: the quorum and nothing else.
async fn run_controller(config: BrokerConfig) -> Result<()> {
    let controller = ControllerNode::start(config)
        .await
        .context("joining the controller quorum")?;
    let shutdown = shutdown_signal()?;
    println!(
        "keel controller listening on {}",
        controller.controller_listener()
    );
    controller.run(shutdown).await;
    tracing::info!("clean shutdown");
    Ok(())
}

/// Installs SIGINT and SIGTERM handlers now and resolves on either.
pub(crate) fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
