//! Container events for the CRI's GetContainerEvents (the kubelet's Evented PLEG): one hub,
//! a bounded broadcast channel. The lifecycle code publishes (create, start, stop or exit,
//! remove); each subscriber reads at its own pace. A subscriber that falls more than
//! [`CAPACITY`] events behind loses the oldest ones (it is told how many, and logs it): it
//! never holds up the daemon, and the hub's memory stays bounded.
//!
//! An event carries the pod and its containers as they were when it happened, taken only
//! when someone listens.

use std::sync::Arc;

use tokio::sync::broadcast;
use tracing::warn;

use super::model::Running;
use super::{ContainerRecord, ContainerState, Containers, Entry, Filter, now_nanos};
use crate::sandbox::SandboxRecord;
use crate::sandbox::process::{async_pidfd, wait_exit};

/// Events kept for the slowest subscriber before it starts losing them.
pub const CAPACITY: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    /// The container's process ended (it exited, was stopped, or its start failed): once per
    /// container.
    Stopped,
    Deleted,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub container_id: String,
    pub kind: EventKind,
    /// When it happened, in nanoseconds since the epoch.
    pub at: i64,
    /// The container's pod at that time (`None` if the pod is gone).
    pub pod: Option<SandboxRecord>,
    /// The pod's containers at that time (a deleted container is no longer among them).
    pub containers: Vec<ContainerRecord>,
}

pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Hub {
    pub fn new(capacity: usize) -> Hub {
        let (tx, _) = broadcast::channel(capacity);
        Hub { tx }
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Whether an event would reach anyone (so that its snapshot is worth taking).
    pub fn listened(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Never blocks: with no subscriber the event goes nowhere.
    pub fn send(&self, e: Event) {
        let _ = self.tx.send(Arc::new(e));
    }
}

impl Containers {
    /// Container events from now on (GetContainerEvents).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Publishes `kind` for container `id` of pod `sandbox_id`, with the pod and its
    /// containers as they are now. Takes no lock of ours but briefly each container's record:
    /// never call it holding one.
    pub(super) fn publish(&self, id: &str, sandbox_id: &str, kind: EventKind) {
        if !self.events.listened() {
            return;
        }
        let at = now_nanos();
        let pod = self.sandboxes.status(sandbox_id).ok();
        let containers = self.list(&Filter {
            sandbox_id: Some(sandbox_id.to_owned()),
            ..Default::default()
        });
        self.events.send(Event {
            container_id: id.to_owned(),
            kind,
            at,
            pod,
            containers,
        });
    }

    /// Publishes CONTAINER_STOPPED for a container found Exited, unless that was done: the
    /// watcher of its monitor and a StopContainer may both see the end. Returns once it was
    /// published, by whichever of them.
    pub(super) fn note_end(&self, entry: &Entry, rec: &ContainerRecord) {
        if rec.state != ContainerState::Exited {
            return;
        }
        let mut ended = entry.ended.lock().expect("lock");
        if !*ended {
            *ended = true;
            self.publish(&rec.id, &rec.sandbox_id, EventKind::Stopped);
        }
    }

    /// Watches the monitor of a running container: it records the exit (`exit.json`), then
    /// ends, and its pidfd becomes readable. Then the record is refreshed and the end
    /// published. One task per running container, no polling. Needs a tokio runtime (the
    /// blocking calls run on its blocking threads).
    pub(super) fn watch_monitor(&self, id: &str, run: Running) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            warn!(container = %id, "no runtime to watch the monitor on: its exit is seen only when asked for");
            return;
        };
        let fd = match run.monitor.pidfd() {
            Ok(fd) => fd,
            Err(e) => {
                warn!(container = %id, pid = run.monitor.pid, error = %e, "cannot watch the monitor: its exit is seen only when asked for");
                return;
            }
        };
        let me = self.me.clone();
        let id = id.to_owned();
        rt.spawn(async move {
            // None: already gone.
            if let Some(fd) = fd {
                match async_pidfd(fd) {
                    Ok(fd) => wait_exit(&fd).await,
                    Err(e) => {
                        warn!(container = %id, error = %e, "cannot watch the monitor: its exit is seen only when asked for");
                        return;
                    }
                }
            }
            let ended = tokio::task::spawn_blocking(move || {
                if let Some(me) = me.upgrade() {
                    me.monitor_ended(&id, run);
                }
            });
            let _ = ended.await;
        });
    }

    /// The monitor of run `run` of container `id` has ended.
    fn monitor_ended(&self, id: &str, run: Running) {
        // Removed meanwhile (and its end published by the removal's stop).
        let Some(entry) = self.entry(id) else { return };
        let rec = {
            let mut rec = entry.rec.lock().expect("lock");
            if rec.running != Some(run) {
                return;
            }
            self.refresh(&mut rec);
            rec.clone()
        };
        self.note_end(&entry, &rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, kind: EventKind) -> Event {
        Event {
            container_id: id.into(),
            kind,
            at: 1,
            pod: None,
            containers: Vec::new(),
        }
    }

    #[test]
    fn subscribers_see_events_in_order() {
        let hub = Hub::new(8);
        assert!(!hub.listened());
        hub.send(ev("before", EventKind::Created));
        let mut rx = hub.subscribe();
        assert!(hub.listened());
        hub.send(ev("a", EventKind::Created));
        hub.send(ev("a", EventKind::Started));
        let first = rx.try_recv().unwrap();
        assert_eq!(
            (first.container_id.as_str(), first.kind),
            ("a", EventKind::Created)
        );
        assert_eq!(rx.try_recv().unwrap().kind, EventKind::Started);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_slow_subscriber_loses_the_oldest_and_carries_on() {
        let hub = Hub::new(4);
        let mut rx = hub.subscribe();
        for i in 0..10 {
            hub.send(ev(&i.to_string(), EventKind::Created));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 6),
            other => panic!("expected a lag, got {other:?}"),
        }
        let ids: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.container_id.clone())
            .collect();
        assert_eq!(ids, ["6", "7", "8", "9"]);
    }
}
