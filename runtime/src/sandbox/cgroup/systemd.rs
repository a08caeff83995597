//! The systemd cgroup driver's conversation with systemd, over its D-Bus API
//! (`org.freedesktop.systemd1.Manager`): a pod's cgroup is a transient scope unit that
//! systemd makes around the pause, with `Delegate=yes`, so that everything below it (the
//! pause's leaf, the monitors, the containers and their limits) is peapod's to manage with
//! cgroupfs, as systemd's delegation rules allow. Every call waits for the job's result.
//!
//! The calls are blocking (the sandbox code runs on blocking threads); each makes its own
//! connection, on a thread of its own.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};

const SERVICE: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long systemd may take to start or stop a scope.
const JOB_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot talk to systemd on the system bus")]
    Bus(#[source] Box<zbus::Error>),
    #[error("systemd refused to {op} {unit}")]
    Call {
        op: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("systemd's job to {op} {unit} ended with {result:?}")]
    Job {
        op: &'static str,
        unit: String,
        result: String,
    },
    #[error("systemd did not finish its job to {op} {unit} within {JOB_WAIT:?}")]
    Timeout { op: &'static str, unit: String },
}

/// A transient scope to make around a running process.
pub struct Scope<'a> {
    /// `<prefix>-<id>.scope`.
    pub unit: &'a str,
    /// The slice unit it goes in, e.g. `kubepods-burstable-pod<uid>.slice`.
    pub slice: &'a str,
    pub pid: u32,
    pub description: &'a str,
    /// Its resource limits, which systemd writes into its cgroup (and again at each
    /// `daemon-reload`): a limit written by hand and not named here would be undone.
    pub limits: &'a [Property],
}

/// A unit's resource property, as systemd's D-Bus API types it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Property {
    /// `MemoryMax`, `TasksMax`, `CPUWeight`, `CPUQuotaPerSecUSec`, … (`u64::MAX`: infinity).
    U64(&'static str, u64),
    /// `AllowedCPUs`, `AllowedMemoryNodes`: a bit mask, bit n of byte n/8 for CPU n.
    Bits(&'static str, Vec<u8>),
}

impl Property {
    pub fn name(&self) -> &'static str {
        match self {
            Property::U64(name, _) | Property::Bits(name, _) => name,
        }
    }

    fn value(&self) -> Value<'_> {
        match self {
            Property::U64(_, v) => (*v).into(),
            Property::Bits(_, v) => v.clone().into(),
        }
    }
}

/// A unit as `ListUnitsByPatterns` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub description: String,
    /// Its cgroup, relative to the hierarchy's root (`ControlGroup` without the leading /);
    /// empty when it has none (not running).
    pub cgroup: String,
}

/// Whether the systemd driver can serve here: systemd is PID 1 of this PID namespace (scopes
/// take PIDs as systemd sees them) and answers on the system bus.
pub fn available() -> bool {
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() != "systemd" || !std::path::Path::new("/run/systemd/system").is_dir() {
        return false;
    }
    block_on(async {
        let conn = zbus::Connection::system().await?;
        let peer = proxy(&conn, "org.freedesktop.DBus.Peer").await?;
        peer.call::<_, _, ()>("Ping", &()).await
    })
    .is_ok()
}

/// Makes the scope `s` with `Delegate=yes` and waits until systemd has started it.
pub fn start_scope(s: &Scope) -> Result<(), SystemdError> {
    block_on(async move {
        let conn = zbus::Connection::system().await.map_err(bus)?;
        let manager = proxy(&conn, MANAGER).await.map_err(bus)?;
        let mut properties: Vec<(&str, Value)> = vec![
            ("Description", s.description.into()),
            ("Slice", s.slice.into()),
            ("Delegate", true.into()),
            ("PIDs", vec![s.pid].into()),
            // A scope that fails is collected too, not left listed as failed.
            ("CollectMode", "inactive-or-failed".into()),
        ];
        // No systemd default (DefaultTasksMax, a share of pid_max) where the request names
        // no limit: a pod's limits are the kubelet's slice's and its containers'.
        if !s.limits.iter().any(|p| p.name() == "TasksMax") {
            properties.push(("TasksMax", u64::MAX.into()));
        }
        properties.extend(s.limits.iter().map(|p| (p.name(), p.value())));
        let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
        let mut removed = manager.receive_signal("JobRemoved").await.map_err(bus)?;
        let job: OwnedObjectPath = manager
            .call("StartTransientUnit", &(s.unit, "replace", properties, aux))
            .await
            .map_err(refused("start", s.unit))?;
        wait_job(&mut removed, &job, "start", s.unit).await
    })
}

/// Changes the resource properties of the running `unit` (for its lifetime, not in a unit
/// file); a unit systemd does not know is no error.
pub fn set_properties(unit: &str, limits: &[Property]) -> Result<(), SystemdError> {
    if limits.is_empty() {
        return Ok(());
    }
    block_on(async move {
        let conn = zbus::Connection::system().await.map_err(bus)?;
        let manager = proxy(&conn, MANAGER).await.map_err(bus)?;
        let properties: Vec<(&str, Value)> = limits.iter().map(|p| (p.name(), p.value())).collect();
        match manager
            .call::<_, _, ()>("SetUnitProperties", &(unit, true, properties))
            .await
        {
            Err(e) if not_loaded(&e) => Ok(()),
            r => r.map_err(refused("set the limits of", unit)),
        }
    })
}

/// Stops `unit` and waits until it is gone; a unit systemd does not know is no error.
pub fn stop_unit(unit: &str) -> Result<(), SystemdError> {
    block_on(async move {
        let conn = zbus::Connection::system().await.map_err(bus)?;
        let manager = proxy(&conn, MANAGER).await.map_err(bus)?;
        let mut removed = manager.receive_signal("JobRemoved").await.map_err(bus)?;
        let job: OwnedObjectPath = match manager.call("StopUnit", &(unit, "replace")).await {
            Ok(job) => job,
            Err(e) if not_loaded(&e) => return Ok(()),
            Err(e) => return Err(refused("stop", unit)(e)),
        };
        wait_job(&mut removed, &job, "stop", unit).await
    })
}

/// The scopes whose names match `pattern` (e.g. `peapod-*.scope`), in any state.
pub fn list_scopes(pattern: &str) -> Result<Vec<Unit>, SystemdError> {
    type Listed = (
        String,
        String,
        String,
        String,
        String,
        String,
        OwnedObjectPath,
        u32,
        String,
        OwnedObjectPath,
    );
    block_on(async move {
        let conn = zbus::Connection::system().await.map_err(bus)?;
        let manager = proxy(&conn, MANAGER).await.map_err(bus)?;
        let states: Vec<&str> = Vec::new();
        let listed: Vec<Listed> = manager
            .call("ListUnitsByPatterns", &(states, vec![pattern]))
            .await
            .map_err(refused("list", pattern))?;
        let mut units = Vec::new();
        for (name, description, .., path, _, _, _) in listed {
            let scope = zbus::proxy::Builder::<zbus::Proxy>::new(&conn)
                .destination(SERVICE)
                .and_then(|b| b.path(path))
                .and_then(|b| b.interface("org.freedesktop.systemd1.Scope"))
                .map_err(bus)?
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(bus)?;
            let cgroup: String = scope
                .get_property("ControlGroup")
                .await
                .map_err(refused("read the cgroup of", &name))?;
            units.push(Unit {
                cgroup: cgroup.trim_start_matches('/').to_owned(),
                name,
                description,
            });
        }
        Ok(units)
    })
}

/// Waits for the end of `job`, whose `JobRemoved` signal `removed` listens for (listening
/// began before the job was queued, so that the end cannot be missed).
async fn wait_job(
    removed: &mut zbus::proxy::SignalStream<'_>,
    job: &OwnedObjectPath,
    op: &'static str,
    unit: &str,
) -> Result<(), SystemdError> {
    let result = tokio::time::timeout(JOB_WAIT, async {
        while let Some(msg) = removed.next().await {
            if let Ok((_, path, _, result)) = msg
                .body()
                .deserialize::<(u32, OwnedObjectPath, String, String)>()
                && &path == job
            {
                return Some(result);
            }
        }
        None
    })
    .await;
    let unit = unit.to_owned();
    match result {
        Ok(Some(r)) if r == "done" => Ok(()),
        Ok(Some(result)) => Err(SystemdError::Job { op, unit, result }),
        Ok(None) => Err(SystemdError::Job {
            op,
            unit,
            result: "the bus connection closed".into(),
        }),
        Err(_) => Err(SystemdError::Timeout { op, unit }),
    }
}

fn refused<'a>(op: &'static str, unit: &'a str) -> impl FnOnce(zbus::Error) -> SystemdError + 'a {
    move |source| SystemdError::Call {
        op,
        unit: unit.to_owned(),
        source: Box::new(source),
    }
}

fn bus(e: zbus::Error) -> SystemdError {
    SystemdError::Bus(Box::new(e))
}

/// Whether systemd said it has no such unit loaded.
fn not_loaded(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

async fn proxy<'a>(conn: &zbus::Connection, interface: &'a str) -> zbus::Result<zbus::Proxy<'a>> {
    zbus::proxy::Builder::<zbus::Proxy>::new(conn)
        .destination(SERVICE)?
        .path(PATH)?
        .interface(interface)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// Runs `f` to completion on a thread and runtime of its own, whatever the caller's thread
/// is (a runtime's worker, a blocking task, a plain thread): the zbus connection lives and
/// dies with it.
fn block_on<F>(f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(f)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
