//! Test images and the CRI ImageService: builds the images with `hack/make-test-images.sh`
//! (a shell script, not cargo), imports them into a node's store with `peapod image import`,
//! and talks ImageService over the node's socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use cri_api::v1::image_service_client::ImageServiceClient;
use cri_api::v1::{
    AuthConfig, Image, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest,
    RemoveImageRequest,
};
use tonic::transport::Channel;

use crate::node::Node;

pub type ImageClient = ImageServiceClient<Channel>;

/// The script that builds the test images.
pub fn make_test_images_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/make-test-images.sh")
}

/// A dir holding `hack/make-test-images.sh`'s output (without `PAUSE`) to copy instead of
/// running the script.
pub const PREBUILT: &str = "PEAPOD_TEST_IMAGES";

/// The test images, built into a temp dir that goes with this value.
pub struct TestImages {
    dir: tempfile::TempDir,
    vars: HashMap<String, String>,
}

impl TestImages {
    /// Runs `hack/make-test-images.sh` into a new temp dir (about a second).
    pub fn build() -> Result<TestImages> {
        Self::build_with(None)
    }

    /// Also `pause.oci.tar`, peapod.test/pause:latest holding `pause` as its entrypoint.
    pub fn build_with_pause(pause: &Path) -> Result<TestImages> {
        Self::build_with(Some(pause))
    }

    fn build_with(pause: Option<&Path>) -> Result<TestImages> {
        let dir = tempfile::Builder::new()
            .prefix("peapod-test-images-")
            .tempdir()?;
        // In the VM test node the host built them once (tests/src/vm.rs): under emulation a
        // copy takes a moment, the script half a minute.
        if let Some(prebuilt) = std::env::var_os(PREBUILT).filter(|_| pause.is_none()) {
            // -L: in the guest the files are links into its read-only input disk.
            let out = Command::new("cp")
                .arg("-RL")
                .arg(Path::new(&prebuilt).join("."))
                .arg(dir.path())
                .output()
                .context("copy the prebuilt test images")?;
            ensure!(
                out.status.success(),
                "copying the prebuilt test images of {PREBUILT} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Self::with_vars(dir);
        }
        let mut cmd = Command::new("bash");
        cmd.arg(make_test_images_script()).arg(dir.path());
        if let Some(pause) = pause {
            cmd.env("PAUSE", pause);
        }
        let out = cmd.output().context("run hack/make-test-images.sh")?;
        ensure!(
            out.status.success(),
            "hack/make-test-images.sh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Self::with_vars(dir)
    }

    fn with_vars(dir: tempfile::TempDir) -> Result<TestImages> {
        let env = std::fs::read_to_string(dir.path().join("digests.env"))?;
        let vars = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(TestImages { dir, vars })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An archive or dir of the output, e.g. `busybox.oci.tar`, `layout`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// A variable of `digests.env`, e.g. `BUSYBOX_CONFIG`.
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("digests.env has no {key}"))
    }
}

impl Node {
    pub async fn image_client(&self) -> Result<ImageClient> {
        Ok(ImageServiceClient::new(
            crate::cri::channel(&self.socket()).await?,
        ))
    }

    /// `peapod image ARGS…` with this node's state dir and socket; returns its stdout.
    pub async fn image_cmd(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(self.bin_dir().join("peapod"))
            .arg("image")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "peapod image {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `peapod image import FILE` on this node's state dir; returns its output.
    pub async fn import_image(&self, file: &Path) -> Result<String> {
        let file = file.to_str().context("non-UTF-8 path")?;
        self.image_cmd(&["import", file]).await
    }

    /// ImageStatus of `image`: `None` when the node does not have it.
    pub async fn image_status(&self, image: &str) -> Result<Option<Image>> {
        let r = self
            .image_client()
            .await?
            .image_status(ImageStatusRequest {
                image: Some(spec(image)),
                verbose: false,
            })
            .await?;
        Ok(r.into_inner().image)
    }

    pub async fn list_images(&self) -> Result<Vec<Image>> {
        let r = self
            .image_client()
            .await?
            .list_images(ListImagesRequest { filter: None })
            .await?;
        Ok(r.into_inner().images)
    }

    /// PullImage; returns the image ref (the id).
    pub async fn pull_image(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let mut c = self
            .image_client()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let r = c
            .pull_image(PullImageRequest {
                image: Some(spec(image)),
                auth,
                sandbox_config: None,
            })
            .await?;
        Ok(r.into_inner().image_ref)
    }

    pub async fn remove_image(&self, image: &str) -> Result<(), tonic::Status> {
        let mut c = self
            .image_client()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        c.remove_image(RemoveImageRequest {
            image: Some(spec(image)),
        })
        .await?;
        Ok(())
    }
}

pub fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}
