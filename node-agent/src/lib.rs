//! `moltops-agent`: enrolls a host once (`enroll`), then keeps one mTLS stream to the control
//! plane open (`run`) and executes the typed commands it receives. It never runs a shell string
//! received from the wire: every command is a closed protobuf variant with its own handler.

pub mod backoff;
pub mod commands;
pub mod egress;
pub mod enroll;
pub mod facts;
pub mod gateway;
pub mod install;
pub mod journal;
pub mod managed;
pub mod methods;
pub mod run;
pub mod runner;
pub mod service;
pub mod state;
pub mod supervisor;
pub mod tls;

/// The agent's version, reported in Hello and Pong.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
