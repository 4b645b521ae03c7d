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
    /// Describe and alter topic and broker configs.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Delete records below an offset.
    #[command(subcommand)]
    Records(commands::records::RecordsCommand),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
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
            Command::Config(cmd) => commands::config::run(cmd).await,
            Command::Records(cmd) => commands::records::run(cmd).await,
        }
    })
}
