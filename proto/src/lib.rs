//! peapod's own gRPC APIs. The CRI is not here: it is the `cri-api` crate (proto/cri-api).

/// `peapod.net.v1`: Kubernetes Services (virtual IPs) programmed by the daemon.
pub mod net {
    pub mod v1 {
        #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
        tonic::include_proto!("peapod.net.v1");
    }
}
