//! `peapod image …`: import and ls work on the image store in the state dir directly, beside a
//! running daemon or without one (writers take the store's lock; the daemon re-reads the index
//! when it changes). pull and rm go through the daemon's CRI socket: it has the registry
//! config, and knows which images its containers use.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cri_api::v1 as cri;
use cri_api::v1::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

use crate::image::{ImageInfo, ImageStore, RegistryConfig};

#[derive(clap::Subcommand)]
pub enum ImageCmd {
    /// Import the images of an OCI image-layout archive or a docker-archive (`docker save`),
    /// named from the archive; prints their ids.
    Import { file: PathBuf },
    /// List the images.
    Ls,
    /// Pull an image through the daemon; prints its id.
    Pull {
        image: String,
        /// Registry credentials, USER:PASSWORD.
        #[arg(long)]
        creds: Option<String>,
    },
    /// Remove an image (or one of its names) through the daemon.
    Rm { image: String },
}

pub fn run(state_dir: &Path, socket: &Path, cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Import { file } => {
            let images = open(state_dir)?
                .import(&file)
                .with_context(|| format!("cannot import {}", file.display()))?;
            for i in images {
                println!("{} {}", i.id, i.repo_tags.join(" "));
            }
        }
        ImageCmd::Ls => {
            println!("{:<45} {:<12} {:<13} SIZE", "IMAGE", "TAG", "IMAGE ID");
            for i in open(state_dir)?.list()? {
                for (name, tag) in names(&i) {
                    println!(
                        "{name:<45} {tag:<12} {:<13} {}",
                        &i.id["sha256:".len()..][..13],
                        human(i.size)
                    );
                }
            }
        }
        ImageCmd::Pull { image, creds } => {
            let auth = creds.map(|c| {
                let (username, password) = c.split_once(':').unwrap_or((&c, ""));
                cri::AuthConfig {
                    username: username.to_owned(),
                    password: password.to_owned(),
                    ..Default::default()
                }
            });
            let req = cri::PullImageRequest {
                image: Some(spec(image)),
                auth,
                sandbox_config: None,
            };
            let r = block_on(async {
                client(socket)
                    .await?
                    .pull_image(req)
                    .await
                    .map_err(Into::into)
            })?;
            println!("{}", r.into_inner().image_ref);
        }
        ImageCmd::Rm { image } => {
            let req = cri::RemoveImageRequest {
                image: Some(spec(image.clone())),
            };
            block_on(async {
                client(socket)
                    .await?
                    .remove_image(req)
                    .await
                    .map_err(Into::into)
            })?;
            println!("{image}");
        }
    }
    Ok(())
}

fn open(state_dir: &Path) -> anyhow::Result<ImageStore> {
    ImageStore::open(state_dir, RegistryConfig::default())
        .with_context(|| format!("cannot open the image store in {}", state_dir.display()))
}

async fn client(socket: &Path) -> anyhow::Result<ImageServiceClient<Channel>> {
    Ok(ImageServiceClient::new(
        crate::client::channel(socket).await?,
    ))
}

fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn spec(image: String) -> cri::ImageSpec {
    cri::ImageSpec {
        image,
        ..Default::default()
    }
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
