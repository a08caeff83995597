//! The shim idles between requests, for as long as its pod lives, and what it runs then (a
//! reaper's wait, a publisher's read) is a small part of its binary. One second after the
//! last request, it unmaps the binary's and libraries' file pages the requests touched
//! ([`peapod::monitor::shed_file_pages`], as the monitor does after start-up): they stay in
//! the page cache, shared by every shim, and fault back in when the next request needs them.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long after the last request the pages go.
const QUIET: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Idle {
    /// When the last request came, if it came after the last shedding.
    last: Mutex<Option<Instant>>,
    wake: Condvar,
}

impl Idle {
    /// Starts the thread that sheds the pages once the shim is quiet.
    pub fn start() -> Arc<Idle> {
        let idle = Arc::new(Idle::default());
        let watcher = idle.clone();
        let spawned = std::thread::Builder::new()
            .name("idle".into())
            .stack_size(64 * 1024)
            .spawn(move || watcher.run());
        if let Err(e) = spawned {
            containerd_shim::warn!("no idle thread (file pages stay mapped): {e}");
        }
        idle
    }

    /// A request came.
    pub fn poke(&self) {
        *self.last.lock().expect("lock") = Some(Instant::now());
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut last = self.last.lock().expect("lock");
        loop {
            match *last {
                None => last = self.wake.wait(last).expect("lock"),
                Some(t) if t.elapsed() < QUIET => {
                    let left = QUIET - t.elapsed();
                    last = self.wake.wait_timeout(last, left).expect("lock").0;
                }
                Some(_) => {
                    *last = None;
                    drop(last);
                    peapod::monitor::shed_file_pages();
                    last = self.last.lock().expect("lock");
                }
            }
        }
    }
}
