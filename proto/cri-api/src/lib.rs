//! The Kubernetes Container Runtime Interface, `runtime.v1`, as the kubelet of Kubernetes
//! 1.36 speaks it (see `build.rs` for where the proto comes from).

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("runtime.v1");
}
