//! `redis-operator`: runs the Redis controllers against the cluster the kubeconfig names.

/// jemalloc rather than glibc's malloc: the operator holds a few small allocations for every
/// object it watches, and glibc's per-chunk overhead and fragmentation made its resident memory
/// a third larger than its heap (README, "Benchmarks").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
