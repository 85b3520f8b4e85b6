//! The Hitcount agent as a library: the `hitcount` binary is a thin CLI over
//! it, and the integration tests drive the same pieces.
//!
//! Data flows one way: `ebpf` (load, attach) -> `drain` (kernel maps ->
//! records) -> `aggregate` (window caches) -> `report` (event objects) ->
//! `sinks`.
pub mod agent;
pub mod aggregate;
pub mod btf;
pub mod check;
pub mod collectors;
pub mod config;
pub mod drain;
pub mod duration;
pub mod ebpf;
pub mod enrich;
pub mod events;
pub mod hostfs;
pub mod kernel_hooks;
pub mod limits;
pub mod listeners;
pub mod net;
pub mod netlink;
pub mod procfs;
pub mod report;
pub mod sinks;
pub mod state;
pub mod tracefs;
pub mod transport;
