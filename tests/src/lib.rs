//! Integration tests of the local cluster and the operators; see the `tests/` folder. The
//! library holds what several tests and benchmarks share.

pub mod local_redis;
pub mod real_node;
