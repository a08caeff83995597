//! `peapod image …`: works on the image store in the state dir directly, beside a running
//! daemon or without one (writers take the store's lock; the daemon re-reads the index when
//! it changes). Pulls go through the daemon, which has the registry config.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::image::{ImageInfo, ImageStore, RegistryConfig};

#[derive(clap::Subcommand)]
pub enum ImageCmd {
    /// Import the images of an OCI image-layout archive or a docker-archive (`docker save`),
    /// named from the archive; prints their ids.
    Import { file: PathBuf },
    /// List the images.
    Ls,
}

pub fn run(state_dir: &Path, cmd: ImageCmd) -> anyhow::Result<()> {
    let store = ImageStore::open(state_dir, RegistryConfig::default())
        .with_context(|| format!("cannot open the image store in {}", state_dir.display()))?;
    match cmd {
        ImageCmd::Import { file } => {
            let images = store
                .import(&file)
                .with_context(|| format!("cannot import {}", file.display()))?;
            for i in images {
                println!("{} {}", i.id, i.repo_tags.join(" "));
            }
        }
        ImageCmd::Ls => {
            println!("{:<45} {:<12} {:<13} SIZE", "IMAGE", "TAG", "IMAGE ID");
            for i in store.list()? {
                for (name, tag) in names(&i) {
                    println!(
                        "{name:<45} {tag:<12} {:<13} {}",
                        &i.id["sha256:".len()..][..13],
                        human(i.size)
                    );
                }
            }
        }
    }
    Ok(())
}

/// (repository, tag) pairs; `<none>` for an image without tags.
fn names(i: &ImageInfo) -> Vec<(String, String)> {
    if i.repo_tags.is_empty() {
        let repo = i
            .repo_digests
            .first()
            .and_then(|d| d.split_once('@'))
            .map_or("<none>", |(n, _)| n);
        return vec![(repo.to_owned(), "<none>".to_owned())];
    }
    i.repo_tags
        .iter()
        .map(|t| match t.rsplit_once(':') {
            Some((n, tag)) if !tag.contains('/') => (n.to_owned(), tag.to_owned()),
            _ => (t.clone(), "<none>".to_owned()),
        })
        .collect()
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}kB", b as f64 / (1u64 << 10) as f64),
        b => format!("{b}B"),
    }
}
