//! `keel`: the broker (`keel server`) and the command-line tools that talk
//! to one over the Kafka protocol.

mod client;
mod commands;
mod lag;
mod settings;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "A Kafka-compatible streaming platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker (and controller) on this machine.
    Server(commands::server::ServerArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(commands::topic::TopicCommand),
    /// Produce records read from stdin, one per line.
    Produce(commands::produce::ProduceArgs),
    /// Consume records from a partition, printing one per line.
    Consume(commands::consume::ConsumeArgs),
    /// List, describe and delete consumer groups and reset their offsets.
    #[command(subcommand)]
    Group(commands::group::GroupCommand),
    /// List and describe transactions, find hanging ones and abort them.
    #[command(subcommand)]
    Txn(commands::txn::TxnCommand),
    /// Describe and alter topic and broker configs.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Take a broker out of the cluster for good (UnregisterBroker).
    #[command(subcommand)]
    Broker(commands::broker::BrokerCommand),
    /// Delete records below an offset.
    #[command(subcommand)]
    Records(commands::records::RecordsCommand),
    /// Tools for development: a local multi-node cluster.
    #[command(subcommand)]
    Dev(commands::dev::DevCommand),
}

fn main() -> Result<()> {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    // openraft narrates every vote and append at info; its warnings are
    // what an operator needs, unless asked for by name.
    let quiet_raft = if directives.contains("openraft") {
        ""
    } else {
        ",openraft=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{directives}{quiet_raft}"
        )))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Server(args) => commands::server::run(args).await,
            Command::Topic(cmd) => commands::topic::run(cmd).await,
            Command::Produce(args) => commands::produce::run(args).await,
            Command::Consume(args) => commands::consume::run(args).await,
            Command::Group(cmd) => commands::group::run(cmd).await,
            Command::Txn(cmd) => commands::txn::run(cmd).await,
            Command::Config(cmd) => commands::config::run(cmd).await,
            Command::Records(cmd) => commands::records::run(cmd).await,
            Command::Broker(cmd) => commands::broker::run(cmd).await,
            Command::Dev(cmd) => commands::dev::run(cmd).await,
        }
    })
}
