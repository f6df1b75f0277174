//! `redis-operator`: runs the Redis controllers against the cluster the kubeconfig names.

#[tokio::main]
async fn main() -> Result<(), operator_kit::runtime::MainError> {
    operator_kit::runtime::run_main(
        redis_operator::OPERATOR_NAME,
        &redis_operator::crds(),
        |operator| {
            operator
                .with_controller(redis_operator::redis_controller())
                .with_controller(redis_operator::redis_sentinel_controller())
        },
    )
    .await
}
