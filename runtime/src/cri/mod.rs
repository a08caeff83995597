//! Thin gRPC adapters, one file per RPC: proto → domain → proto. Errors become a
//! `tonic::Status` in one place (`status.rs`).

mod attach;
mod container_stats;
mod container_status;
mod convert;
mod create_container;
mod exec;
mod exec_sync;
mod get_container_events;
mod image;
mod image_fs_info;
mod image_status;
mod list_container_stats;
mod list_containers;
mod list_images;
mod list_pod_sandbox;
mod list_pod_sandbox_stats;
mod pod_sandbox_metrics;
mod pod_sandbox_stats;
mod pod_sandbox_status;
mod port_forward;
mod pull_image;
mod remove_container;
mod remove_image;
mod remove_pod_sandbox;
mod reopen_container_log;
mod resources;
mod run_pod_sandbox;
mod runtime_config;
mod runtime_status;
mod signal;
mod start_container;
pub mod status;
mod stop_container;
mod stop_pod_sandbox;
mod streams;
mod update_container_resources;
mod update_pod_sandbox_resources;
mod update_runtime_config;
pub mod version;

use std::pin::Pin;
use std::sync::Arc;

use cri_api::v1 as cri;
use cri_api::v1::image_service_server::ImageService;
use cri_api::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::container::Containers;
use crate::image::ImageStore;
use crate::network::NodeNetwork;
use crate::sandbox::Sandboxes;
use crate::streaming::StreamServer;

/// Serves both the RuntimeService and the ImageService (cheap to clone: all shared).
#[derive(Clone)]
pub struct CriService {
    pub sandboxes: Arc<Sandboxes>,
    pub containers: Arc<Containers>,
    pub net: Arc<NodeNetwork>,
    pub images: Arc<ImageStore>,
    pub streaming: Arc<StreamServer>,
}

impl CriService {
    /// Whether a container uses image `id` (`sha256:…`): RemoveImage refuses to delete it.
    pub fn image_in_use(&self, id: &str) -> bool {
        self.containers.uses_image(id)
    }
}

type Res<T> = Result<Response<T>, Status>;

/// RPCs that arrive with later issues: answer Unimplemented, with a message. Written in the
/// shape `async_trait` expands to, since the attribute does not see into macro output.
macro_rules! not_yet {
    ($($name:ident: $req:ty => $resp:ty;)*) => {$(
        fn $name<'s, 'a>(
            &'s self,
            _req: Request<$req>,
        ) -> Pin<Box<dyn std::future::Future<Output = Res<$resp>> + Send + 'a>>
        where
            's: 'a,
            Self: 'a,
        {
            Box::pin(std::future::ready(Err(status::unimplemented(stringify!($name)))))
        }
    )*};
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(&self, req: Request<cri::VersionRequest>) -> Res<cri::VersionResponse> {
        Ok(Response::new(version::handle(req.into_inner())))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Res<cri::RunPodSandboxResponse> {
        run_pod_sandbox::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Res<cri::StopPodSandboxResponse> {
        stop_pod_sandbox::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Res<cri::RemovePodSandboxResponse> {
        remove_pod_sandbox::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Res<cri::PodSandboxStatusResponse> {
        pod_sandbox_status::handle(self, req.into_inner()).map(Response::new)
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Res<cri::ListPodSandboxResponse> {
        list_pod_sandbox::handle(self, req.into_inner()).map(Response::new)
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> Res<cri::StatusResponse> {
        Ok(Response::new(runtime_status::handle(
            self,
            req.into_inner(),
        )))
    }

    async fn runtime_config(
        &self,
        req: Request<cri::RuntimeConfigRequest>,
    ) -> Res<cri::RuntimeConfigResponse> {
        Ok(Response::new(runtime_config::handle(
            self,
            req.into_inner(),
        )))
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Res<cri::UpdateRuntimeConfigResponse> {
        update_runtime_config::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    type GetContainerEventsStream = Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        req: Request<cri::GetEventsRequest>,
    ) -> Res<Self::GetContainerEventsStream> {
        Ok(Response::new(get_container_events::handle(
            self,
            req.into_inner(),
        )))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Res<cri::CreateContainerResponse> {
        create_container::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Res<cri::StartContainerResponse> {
        start_container::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Res<cri::StopContainerResponse> {
        stop_container::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Res<cri::RemoveContainerResponse> {
        remove_container::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Res<cri::ListContainersResponse> {
        list_containers::handle(self, req.into_inner()).map(Response::new)
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Res<cri::ContainerStatusResponse> {
        container_status::handle(self, req.into_inner()).map(Response::new)
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Res<cri::ReopenContainerLogResponse> {
        reopen_container_log::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> Res<cri::ExecResponse> {
        exec::handle(self, req.into_inner()).map(Response::new)
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> Res<cri::AttachResponse> {
        attach::handle(self, req.into_inner()).map(Response::new)
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Res<cri::PortForwardResponse> {
        port_forward::handle(self, req.into_inner()).map(Response::new)
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> Res<cri::ExecSyncResponse> {
        exec_sync::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Res<cri::UpdateContainerResourcesResponse> {
        update_container_resources::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Res<cri::ContainerStatsResponse> {
        container_stats::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Res<cri::ListContainerStatsResponse> {
        list_container_stats::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Res<cri::PodSandboxStatsResponse> {
        pod_sandbox_stats::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Res<cri::ListPodSandboxStatsResponse> {
        list_pod_sandbox_stats::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    type StreamPodSandboxesStream = streams::Items<cri::StreamPodSandboxesResponse>;
    type StreamContainersStream = streams::Items<cri::StreamContainersResponse>;
    type StreamContainerStatsStream = streams::Items<cri::StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = streams::Items<cri::StreamPodSandboxStatsResponse>;
    type StreamPodSandboxMetricsStream = streams::Items<cri::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandboxes(
        &self,
        req: Request<cri::StreamPodSandboxesRequest>,
    ) -> Res<Self::StreamPodSandboxesStream> {
        let filter = req.into_inner().filter;
        let list = list_pod_sandbox::handle(self, cri::ListPodSandboxRequest { filter })?;
        Ok(Response::new(streams::chunked(
            list.items,
            |pod_sandboxes| cri::StreamPodSandboxesResponse { pod_sandboxes },
        )))
    }

    async fn stream_containers(
        &self,
        req: Request<cri::StreamContainersRequest>,
    ) -> Res<Self::StreamContainersStream> {
        let filter = req.into_inner().filter;
        let list = list_containers::handle(self, cri::ListContainersRequest { filter })?;
        Ok(Response::new(streams::chunked(
            list.containers,
            |containers| cri::StreamContainersResponse { containers },
        )))
    }

    async fn stream_container_stats(
        &self,
        req: Request<cri::StreamContainerStatsRequest>,
    ) -> Res<Self::StreamContainerStatsStream> {
        let filter = req.into_inner().filter;
        let list =
            list_container_stats::handle(self, cri::ListContainerStatsRequest { filter }).await?;
        Ok(Response::new(streams::chunked(
            list.stats,
            |container_stats| cri::StreamContainerStatsResponse { container_stats },
        )))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Res<Self::StreamPodSandboxStatsStream> {
        let filter = req.into_inner().filter;
        let list = list_pod_sandbox_stats::handle(self, cri::ListPodSandboxStatsRequest { filter })
            .await?;
        Ok(Response::new(streams::chunked(
            list.stats,
            |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )))
    }

    async fn update_pod_sandbox_resources(
        &self,
        req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Res<cri::UpdatePodSandboxResourcesResponse> {
        update_pod_sandbox_resources::handle(self, req.into_inner()).map(Response::new)
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Res<cri::ListMetricDescriptorsResponse> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: pod_sandbox_metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Res<cri::ListPodSandboxMetricsResponse> {
        let pod_metrics = pod_sandbox_metrics::handle(self).await?;
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Res<Self::StreamPodSandboxMetricsStream> {
        let all = pod_sandbox_metrics::handle(self).await?;
        Ok(Response::new(streams::chunked(
            all,
            |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }

    not_yet! {
        checkpoint_container: cri::CheckpointContainerRequest => cri::CheckpointContainerResponse;
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Res<cri::ListImagesResponse> {
        list_images::handle(self, req.into_inner()).map(Response::new)
    }

    type StreamImagesStream = streams::Items<cri::StreamImagesResponse>;

    async fn stream_images(
        &self,
        req: Request<cri::StreamImagesRequest>,
    ) -> Res<Self::StreamImagesStream> {
        let filter = req.into_inner().filter;
        let list = list_images::handle(self, cri::ListImagesRequest { filter })?;
        Ok(Response::new(streams::chunked(list.images, |images| {
            cri::StreamImagesResponse { images }
        })))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Res<cri::ImageStatusResponse> {
        image_status::handle(self, req.into_inner()).map(Response::new)
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Res<cri::RemoveImageResponse> {
        remove_image::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_fs_info(
        &self,
        req: Request<cri::ImageFsInfoRequest>,
    ) -> Res<cri::ImageFsInfoResponse> {
        image_fs_info::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn pull_image(&self, req: Request<cri::PullImageRequest>) -> Res<cri::PullImageResponse> {
        pull_image::handle(self, req.into_inner())
            .await
            .map(Response::new)
    }
}
