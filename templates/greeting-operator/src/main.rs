//! `greeting-operator`: runs the Greeting controller against the cluster of the kubeconfig (or
//! the pod's service account). `--help` lists every flag, this operator's own `--image` among
//! the runtime's; `--print-crds` prints the CRD.

use greeting_operator::{Greeting, GreetingReconciler};
use operator_kit::k8s_openapi::api::apps::v1::Deployment;
use operator_kit::k8s_openapi::api::core::v1::ConfigMap;
use operator_kit::kube::CustomResourceExt;
use operator_kit::{Controller, Operator};

/// The flags of this operator, next to operator-kit's.
#[derive(clap::Args)]
struct Flags {
    /// The image serving each greeting.
    #[arg(long, env = "GREETING_IMAGE", default_value = "nginx:1.27")]
    image: String,
}

#[tokio::main]
async fn main() -> Result<(), operator_kit::MainError> {
    operator_kit::run_main_with(
        "greeting-operator",
        &[Greeting::crd()],
        |operator: Operator, flags: Flags| {
            let reconciler = GreetingReconciler { image: flags.image };
            operator.with_controller(
                Controller::new("greeting", reconciler)
                    .owns::<ConfigMap>()
                    .owns::<Deployment>(),
            )
        },
    )
    .await
}
