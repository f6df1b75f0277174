//! `website-operator`: run the example operator against the cluster of the kubeconfig.

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::CustomResourceExt;
use operator_kit::{Controller, Operator, OperatorArgs};
use website_operator::{Website, WebsiteReconciler};

/// The example operator of operator-kit.
#[derive(Parser)]
struct Command {
    /// Print the CustomResourceDefinition and exit.
    #[arg(long)]
    print_crds: bool,
    #[command(flatten)]
    operator: OperatorArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::parse();
    if command.print_crds {
        print!("{}", operator_kit::crd::to_yaml(&[Website::crd()])?);
        return Ok(());
    }
    command.operator.init_logging();
    let config = kube::Config::infer().await?;
    let controller = Controller::new("website", WebsiteReconciler)
        .owns::<ConfigMap>()
        .owns::<Deployment>()
        .owns::<Service>();
    Operator::from_config("website-operator", config, command.operator)?
        .with_controller(controller)
        .run()
        .await?;
    Ok(())
}
