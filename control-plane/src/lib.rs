//! `moltops-server`: the control plane. It serves the REST API (and later the web admin) on one
//! port and the agent gRPC service (mTLS) on another, and keeps all of its state in Postgres, so
//! any number of replicas can run against one database.
//!
//! Start at [`serve::run`]; `docs/ARCHITECTURE.md` has the code map.

pub mod api_tokens;
pub mod audit;
pub mod audit_forward;
pub mod audit_keys;
pub mod auth;
pub mod ca;
pub mod clock;
pub mod config;
pub mod confirm;
pub mod crypto;
pub mod db;
pub mod enrollment;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod http_tls;
pub mod hub;
pub mod jobs;
pub mod oidc;
pub mod pairing;
pub mod ratelimit;
pub mod rbac;
pub mod roles;
pub mod serve;
pub mod session;
pub mod users;
