//! Integration tests of the local cluster and the operators; see the `tests/` folder.
