//! `cairnd`, the Cairn replication daemon, and `cairnctl`, its admin CLI: a thin tokio driver
//! around the sans-I/O protocol core. The QUIC transport, the redb store, the local HTTP API,
//! metrics and configuration live here; the protocol logic does not.

#![forbid(unsafe_code)]

pub mod api;
pub mod archive;
pub mod backup;
pub mod client;
pub mod commit;
pub mod config;
pub mod console;
pub mod ctl;
pub mod daemon;
pub mod demo;
pub mod discipline;
pub mod driver;
pub mod fsck;
pub mod json;
pub mod logging;
pub mod metrics;
pub mod overlay;
pub mod service;
pub mod store;
pub mod tls;
pub mod transport;
