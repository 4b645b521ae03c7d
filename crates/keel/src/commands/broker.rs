//! `keel broker unregister`: UnregisterBroker, as Kafka's
//! `kafka-cluster.sh unregister`. The last step of taking a broker out of
//! service, after its replicas were reassigned and its process stopped.

use anyhow::Result;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{BrokerId, UnregisterBrokerRequest};

use super::cluster;
use crate::client::{self, BootstrapArgs, Client};

#[derive(clap::Subcommand, Debug)]
pub enum BrokerCommand {
    /// Forget a broker: it leaves every ISR and leadership and the
    /// cluster's broker list. Replica lists keep naming it until reassigned.
    Unregister {
        /// The broker's node.id.
        #[arg(long)]
        id: i32,
        #[command(flatten)]
        bootstrap: BootstrapArgs,
    },
}

pub async fn run(cmd: BrokerCommand) -> Result<()> {
    let BrokerCommand::Unregister { id, bootstrap } = cmd;
    let mut client = Client::connect(&bootstrap.address).await?;
    // A quorum electing a controller (the broker just stopped may have
    // been it) answers NOT_CONTROLLER meanwhile, as Kafka's does.
    let not_controller = ResponseError::NotController.code();
    let response = cluster::retry_while(
        |code| code == not_controller,
        async || {
            let request = UnregisterBrokerRequest::default().with_broker_id(BrokerId(id));
            let response = client.send(request).await?;
            Ok((response.error_code, response))
        },
    )
    .await?;
    client::check_with_message(
        response.error_code,
        response.error_message.as_deref(),
        format!("unregistering broker {id}"),
    )?;
    println!("Broker {id} is no longer registered.");
    Ok(())
}
