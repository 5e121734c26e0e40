//! The gRPC contract between `moltops-server` and `moltops-agent` (generated from
//! `moltops/agent/v1/agent.proto`) and the node identity format both sides agree on.

#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod agent {
    //! Generated types for `moltops.agent.v1`.
    tonic::include_proto!("moltops.agent.v1");
}

pub mod identity;
