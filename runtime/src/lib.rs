//! peapod's runtime: the CRI daemon, its containers' monitor and init, the image store. The
//! `peapod` binary (the daemon, its CLI and the helpers it runs: `peapod monitor`, `peapod
//! enter`) is built on it, and so is the containerd shim (the `shim` crate).

pub mod client;
pub mod config;
pub mod container;
pub mod cri;
pub mod ctr_client;
pub mod daemon;
pub mod errors;
pub mod explain;
pub mod fault;
pub mod image;
pub mod image_cmd;
pub mod inroot;
pub mod kube;
pub mod monitor;
pub mod network;
pub mod nodes;
pub mod sandbox;
pub mod services;
pub mod store;
pub mod streaming;
