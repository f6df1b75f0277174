//! `website-operator`: run the example operator against the cluster of the kubeconfig.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::CustomResourceExt;
use operator_kit::Controller;
use website_operator::{Website, WebsiteReconciler};

#[tokio::main]
async fn main() -> Result<(), operator_kit::runtime::MainError> {
    let controller = Controller::new("website", WebsiteReconciler)
        .owns::<ConfigMap>()
        .owns::<Deployment>()
        .owns::<Service>();
    operator_kit::runtime::run_main("website-operator", &[Website::crd()], |operator| {
        operator.with_controller(controller)
    })
    .await
}
