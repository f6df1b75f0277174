//! `redis-operator`: runs the Redis controllers against the cluster the kubeconfig names.

use clap::Parser;
use operator_kit::{Operator, OperatorArgs};

/// Runs Redis on Kubernetes.
#[derive(Parser)]
#[command(version)]
struct Command {
    /// Print the CustomResourceDefinitions and exit.
    #[arg(long)]
    print_crds: bool,
    #[command(flatten)]
    operator: OperatorArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::parse();
    if command.print_crds {
        print!("{}", operator_kit::crd::to_yaml(&redis_operator::crds())?);
        return Ok(());
    }
    command.operator.init_logging();
    let config = kube::Config::infer().await?;
    Operator::from_config(redis_operator::OPERATOR_NAME, config, command.operator)?
        .with_controller(redis_operator::redis_controller())
        .run()
        .await?;
    Ok(())
}
