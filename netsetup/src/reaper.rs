//! Deleting a link costs the kernel an RCU grace period (15–20 ms on this kind of machine)
//! while cutting it off the bridge and taking it down costs well under a millisecond. So a
//! detach isolates the link at once — from then on it carries no traffic, and its pod's IP
//! can be handed out again — and this reaper deletes it on a thread of its own.
//!
//! A link queued here when the process dies stays isolated; start-up garbage collection
//! ([`crate::Network::collect_links`]) deletes it.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};

use crate::netlink::Netlink;

/// A link to delete, with a handle of the namespace it is in.
type Job = (Netlink, String);

#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

/// A background deleter of links. Cheap to clone; the thread starts with the first link.
#[derive(Clone, Default)]
pub struct LinkReaper {
    tx: Arc<Mutex<Option<Sender<Job>>>>,
    pending: Arc<Pending>,
}

impl std::fmt::Debug for LinkReaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkReaper")
            .field("pending", &*self.pending.count.lock().expect("lock"))
            .finish()
    }
}

impl LinkReaper {
    /// Deletes `name` through `nl` (a handle of the namespace the link is in) later.
    pub fn queue(&self, nl: Netlink, name: String) {
        *self.pending.count.lock().expect("lock") += 1;
        let mut tx = self.tx.lock().expect("lock");
        let sender = tx.get_or_insert_with(|| self.start());
        if let Err(mpsc::SendError((mut nl, name))) = sender.send((nl, name)) {
            // The thread is gone (it never panics, but be safe): delete inline.
            *tx = None;
            delete(&mut nl, &name);
            self.done();
        }
    }

    /// Returns once every queued link has been deleted.
    pub fn wait_idle(&self) {
        let mut n = self.pending.count.lock().expect("lock");
        while *n > 0 {
            n = self.pending.idle.wait(n).expect("lock");
        }
    }

    fn done(&self) {
        let mut n = self.pending.count.lock().expect("lock");
        *n -= 1;
        if *n == 0 {
            self.pending.idle.notify_all();
        }
    }

    fn start(&self) -> Sender<Job> {
        let (tx, rx) = mpsc::channel::<Job>();
        let me = self.clone();
        std::thread::Builder::new()
            .name("netsetup-reaper".into())
            .spawn(move || {
                for (mut nl, name) in rx {
                    delete(&mut nl, &name);
                    me.done();
                }
            })
            .expect("spawn the link reaper");
        tx
    }
}

fn delete(nl: &mut Netlink, name: &str) {
    if let Err(error) = nl.delete_link(name) {
        tracing::warn!(ifname = name, error = %crate::chain(&error), "cannot delete link");
    }
}
