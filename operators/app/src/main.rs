//! `app-operator`: runs the App controller against the cluster the kubeconfig names.

#[tokio::main]
async fn main() -> Result<(), operator_kit::runtime::MainError> {
    operator_kit::runtime::run_main(
        app_operator::OPERATOR_NAME,
        &app_operator::crds(),
        |operator| operator.with_controller(app_operator::app_controller()),
    )
    .await
}
