//! GetContainerEvents over CRI: a subscription and waiting for its events.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cri_api::v1::{ContainerEventResponse, ContainerEventType, GetEventsRequest};
use tonic::Streaming;

use crate::node::Node;

/// A live GetContainerEvents stream: it sees what happens after [`Node::container_events`]
/// returned.
pub struct Events {
    stream: Streaming<ContainerEventResponse>,
}

impl Node {
    /// Subscribes to the daemon's container events.
    pub async fn container_events(&self) -> Result<Events> {
        let stream = self
            .client()
            .await?
            .get_container_events(GetEventsRequest {})
            .await
            .context("GetContainerEvents")?
            .into_inner();
        Ok(Events { stream })
    }
}

impl Events {
    /// The next event, whichever container it is for; fails after `timeout` or if the
    /// stream ends.
    pub async fn next(&mut self, timeout: Duration) -> Result<ContainerEventResponse> {
        match tokio::time::timeout(timeout, self.stream.message()).await {
            Err(_) => bail!("no container event within {timeout:?}"),
            Ok(Err(status)) => bail!("the event stream failed: {status}"),
            Ok(Ok(None)) => bail!("the event stream ended"),
            Ok(Ok(Some(e))) => Ok(e),
        }
    }

    /// The next event for container `id` (those for others are skipped); fails unless it is
    /// of type `kind`, or after `timeout`.
    pub async fn expect(
        &mut self,
        id: &str,
        kind: ContainerEventType,
        timeout: Duration,
    ) -> Result<ContainerEventResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self
                .next(left)
                .await
                .with_context(|| format!("waiting for {kind:?} of {id}"))?;
            if e.container_id != id {
                continue;
            }
            if e.container_event_type != kind as i32 {
                bail!(
                    "expected {kind:?} of {id}, got {:?}: {e:?}",
                    ContainerEventType::try_from(e.container_event_type)
                );
            }
            return Ok(e);
        }
    }

    /// Every event that arrives within `quiet` of the one before.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<ContainerEventResponse> {
        let mut out = Vec::new();
        while let Ok(e) = self.next(quiet).await {
            out.push(e);
        }
        out
    }
}
