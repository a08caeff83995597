//! GetContainerEvents: a server stream of the container events (see
//! `container::events`), each with its pod's status and its pod's containers' statuses as
//! they were when it happened, made by the same code as PodSandboxStatus and ContainerStatus.

use cri_api::v1 as cri;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tracing::warn;

use super::{CriService, container_status, pod_sandbox_status};
use crate::container::events::{Event, EventKind};

#[tracing::instrument(name = "GetContainerEvents", skip_all)]
pub fn handle(
    svc: &CriService,
    _req: cri::GetEventsRequest,
) -> <CriService as cri::runtime_service_server::RuntimeService>::GetContainerEventsStream {
    let events = BroadcastStream::new(svc.containers.subscribe()).filter_map(|e| match e {
        Ok(e) => Some(Ok(response(&e))),
        // A subscriber that fell behind loses the oldest events and carries on.
        Err(BroadcastStreamRecvError::Lagged(n)) => {
            warn!(
                lost = n,
                "a GetContainerEvents subscriber fell behind: events dropped"
            );
            None
        }
    });
    Box::pin(events)
}

fn kind(k: EventKind) -> cri::ContainerEventType {
    match k {
        EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    }
}

fn response(e: &Event) -> cri::ContainerEventResponse {
    cri::ContainerEventResponse {
        container_id: e.container_id.clone(),
        container_event_type: kind(e.kind) as i32,
        created_at: e.at,
        pod_sandbox_status: e.pod.as_ref().map(pod_sandbox_status::status),
        containers_statuses: e.containers.iter().map(container_status::status).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_cri_type() {
        let types: Vec<i32> = [
            EventKind::Created,
            EventKind::Started,
            EventKind::Stopped,
            EventKind::Deleted,
        ]
        .into_iter()
        .map(|k| kind(k) as i32)
        .collect();
        assert_eq!(types, [0, 1, 2, 3]);
    }
}
