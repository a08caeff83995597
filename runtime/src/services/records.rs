//! The Services on disk: a snapshot (`services.json`, every Service) and a journal of the
//! changes since (`journal.jsonl`, one JSON line per change, appended and fsynced). One
//! change costs one small append, however many Services there are; a bulk change writes a
//! new snapshot at once. Opening replays the journal over the snapshot and compacts the two.
//! A last line torn by a crash is a change that was never acknowledged, and is dropped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::{Key, Service};
use crate::store::{self, StoreError};

const SNAPSHOT: &str = "services.json";
const JOURNAL: &str = "journal.jsonl";
/// The journal is folded into a new snapshot after this many changes.
const COMPACT_AFTER: usize = 4096;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    Set(Service),
    Remove { namespace: String, name: String },
}

pub struct Records {
    dir: PathBuf,
    journal: File,
    changes: usize,
}

impl Records {
    /// Reads every Service, then starts a fresh journal over a snapshot of them.
    pub fn open(dir: &Path) -> Result<(Records, BTreeMap<Key, Service>), StoreError> {
        store::create_dir_all(dir)?;
        let mut services = BTreeMap::new();
        let snapshot: Vec<Service> = store::read_json_opt(&dir.join(SNAPSHOT))?.unwrap_or_default();
        for s in snapshot {
            services.insert(s.key(), s);
        }
        let journal_path = dir.join(JOURNAL);
        let replayed = replay(&journal_path, &mut services)?;
        let mut records = Records {
            dir: dir.to_owned(),
            journal: open_journal(&journal_path, replayed == 0)?,
            changes: 0,
        };
        if replayed > 0 {
            records.snapshot(services.values())?;
        }
        Ok((records, services))
    }

    pub fn set(&mut self, s: &Service) -> Result<(), StoreError> {
        self.append(&Change::Set(s.clone()))
    }

    pub fn remove(&mut self, key: &Key) -> Result<(), StoreError> {
        self.append(&Change::Remove {
            namespace: key.0.clone(),
            name: key.1.clone(),
        })
    }

    /// Replaces everything with `all`: a new snapshot, an empty journal.
    pub fn snapshot<'a>(
        &mut self,
        all: impl Iterator<Item = &'a Service>,
    ) -> Result<(), StoreError> {
        let all: Vec<&Service> = all.collect();
        store::write_json(&self.dir.join(SNAPSHOT), &all)?;
        // After the snapshot is durable: a crash in between replays changes it already has.
        self.journal = open_journal(&self.dir.join(JOURNAL), true)?;
        self.changes = 0;
        Ok(())
    }

    /// Whether the journal is long enough to be folded into a snapshot.
    pub fn wants_compaction(&self) -> bool {
        self.changes >= COMPACT_AFTER
    }

    fn append(&mut self, change: &Change) -> Result<(), StoreError> {
        let path = self.dir.join(JOURNAL);
        let err = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(change).expect("records serialize");
        line.push(b'\n');
        self.journal.write_all(&line).map_err(err)?;
        self.journal.sync_data().map_err(err)?;
        self.changes += 1;
        Ok(())
    }
}

fn open_journal(path: &Path, truncate: bool) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .append(!truncate)
        .write(true)
        .truncate(truncate)
        .open(path)
        .map_err(|source| StoreError::Write {
            path: path.to_owned(),
            source,
        })
}

/// Applies the journal's changes to `services`; how many there were. A line that does not
/// parse ends the replay if it is the last (torn by a crash), and is an error otherwise.
fn replay(path: &Path, services: &mut BTreeMap<Key, Service>) -> Result<usize, StoreError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|source| StoreError::Read {
            path: path.to_owned(),
            source,
        })?;
    let mut n = 0;
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Change>(line) {
            Ok(Change::Set(s)) => {
                services.insert(s.key(), s);
            }
            Ok(Change::Remove { namespace, name }) => {
                services.remove(&(namespace, name));
            }
            Err(_) if i + 1 == lines.len() => {
                tracing::warn!(path = %path.display(), "dropping a torn last journal line");
                break;
            }
            Err(source) => {
                return Err(StoreError::Decode {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model::{Port, Protocol};

    fn service(name: &str, ip: &str) -> Service {
        Service {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: ip.parse().unwrap(),
            ports: vec![Port {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 80,
                node_port: None,
            }],
            external_ips: vec![],
            affinity: None,
            endpoints: vec![],
        }
    }

    fn names(m: &BTreeMap<Key, Service>) -> Vec<String> {
        m.values()
            .map(|s| format!("{} {}", s.name, s.cluster_ip))
            .collect()
    }

    #[test]
    fn changes_survive_a_reopen_and_are_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, all) = Records::open(dir.path()).unwrap();
        assert!(all.is_empty());
        r.snapshot([service("a", "10.96.0.1"), service("b", "10.96.0.2")].iter())
            .unwrap();
        r.set(&service("c", "10.96.0.3")).unwrap();
        r.set(&service("a", "10.96.0.9")).unwrap();
        r.remove(&("default".into(), "b".into())).unwrap();
        drop(r);
        let (_, all) = Records::open(dir.path()).unwrap();
        assert_eq!(names(&all), ["a 10.96.0.9", "c 10.96.0.3"]);
        // Compacted: the journal is empty, the snapshot has it all.
        assert_eq!(std::fs::read(dir.path().join(JOURNAL)).unwrap(), b"");
        let (_, again) = Records::open(dir.path()).unwrap();
        assert_eq!(names(&again), names(&all));
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_torn_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, _) = Records::open(dir.path()).unwrap();
        r.set(&service("a", "10.96.0.1")).unwrap();
        drop(r);
        let journal = dir.path().join(JOURNAL);
        let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(b"{\"set\": {\"namesp").unwrap();
        drop(f);
        let (_, all) = Records::open(dir.path()).unwrap();
        assert_eq!(names(&all), ["a 10.96.0.1"]);
        std::fs::write(
            &journal,
            b"garbage\n{\"remove\":{\"namespace\":\"default\",\"name\":\"a\"}}\n",
        )
        .unwrap();
        assert!(matches!(
            Records::open(dir.path()),
            Err(StoreError::Decode { .. })
        ));
    }
}
