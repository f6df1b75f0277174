//! Integration tests of the local cluster and the operators; see the `tests/` folder. The
//! library holds what several tests and benchmarks share.

pub mod checker;
pub mod fault_suite;
pub mod history;
pub mod local_redis;
pub mod nemesis;
pub mod netns;
pub mod real_node;
pub mod real_set;
pub mod workload;
