//! A real OCI registry (Debian's `docker-registry`, the CNCF distribution) inside a node: it
//! listens on the node's own loopback, keeps its storage in the node's temp dir, and dies with
//! the node. Test images go in with `skopeo`, run inside the node too. For HTTPS, a
//! throwaway [`TestCa`] made with the `openssl` CLI signs the registry's certificate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::exec::Background;
use crate::node::Node;

/// A registry running in a node; killed with it (or when this is dropped).
pub struct Registry {
    pub addr: String,
    dir: PathBuf,
    _process: Background,
}

impl Registry {
    /// Where the registry keeps blob `digest` (`sha256:…`): tamper with it to corrupt it.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// A throwaway CA in a temp dir (removed on drop) with a server certificate for the IP
/// `127.0.0.1`, one for another name, and a client certificate, all made with the `openssl`
/// CLI. It lives outside
/// any node, so that a node's config can name its files before the node starts.
pub struct TestCa {
    dir: tempfile::TempDir,
}

/// OpenSSL extensions of the server certificate: the registry's IP, not a CA.
const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
                          keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n";
/// A server certificate for a name the registry is not reached by.
const WRONG_NAME_EXT: &str = "subjectAltName=DNS:elsewhere.test\n\
                              basicConstraints=critical,CA:FALSE\n\
                              keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n";
const CLIENT_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=clientAuth\n";

impl TestCa {
    pub fn new() -> Result<TestCa> {
        let dir = tempfile::Builder::new()
            .prefix("peapod-test-ca-")
            .tempdir()?;
        let ca = TestCa { dir };
        std::fs::create_dir(ca.client_dir())?;
        let d = ca.dir.path();
        let path = |name: &str| d.join(name).display().to_string();
        let p256 = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &p256,
                &["-days", "2", "-subj", "/CN=peapod-test-ca"],
                &["-keyout", &path("ca.key"), "-out", &path("ca.pem")],
            ]
            .concat(),
        )?;
        for (name, cert, subject, ext) in [
            ("server", "server.pem", "/CN=127.0.0.1", SERVER_EXT),
            (
                "wrong-name",
                "wrong-name.pem",
                "/CN=elsewhere.test",
                WRONG_NAME_EXT,
            ),
            (
                "client/client",
                "client/client.cert",
                "/CN=peapod-test-node",
                CLIENT_EXT,
            ),
        ] {
            let (key, csr, ext_file) = (
                path(&format!("{name}.key")),
                path(&format!("{name}.csr")),
                path(&format!("{name}.ext")),
            );
            std::fs::write(&ext_file, ext)?;
            openssl(
                &[
                    &["req"][..],
                    &p256,
                    &["-subj", subject, "-keyout", &key, "-out", &csr],
                ]
                .concat(),
            )?;
            let cert = path(cert);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &path("ca.pem"),
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext_file,
                "-out",
                &cert,
            ])?;
            std::fs::remove_file(&csr)?;
            std::fs::remove_file(&ext_file)?;
        }
        std::fs::copy(ca.ca(), ca.client_dir().join("ca.crt"))?;
        Ok(ca)
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate for `127.0.0.1` and its key (PEM).
    pub fn server(&self) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        (d.join("server.pem"), d.join("server.key"))
    }

    /// The client certificate and its key (PEM).
    pub fn client(&self) -> (PathBuf, PathBuf) {
        let d = self.client_dir();
        (d.join("client.cert"), d.join("client.key"))
    }

    /// The client certificate, its key and the CA as `skopeo --dest-cert-dir` wants them.
    fn client_dir(&self) -> PathBuf {
        self.dir.path().join("client")
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .context("run openssl (hack/setup.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// How a test registry speaks TLS.
#[derive(Clone, Copy)]
pub struct RegistryTls<'a> {
    /// Signs its certificate.
    pub ca: &'a TestCa,
    /// It refuses clients without a certificate from `ca`.
    pub require_client_cert: bool,
    /// Its certificate names another host (`elsewhere.test`), not 127.0.0.1.
    pub wrong_name: bool,
}

impl Node {
    /// Starts a registry on `addr` (e.g. `127.0.0.1:5000`) inside the node, plain HTTP, with
    /// basic auth for `user:password` when given, and waits until it accepts connections.
    pub async fn start_registry(
        &self,
        addr: &str,
        basic: Option<(&str, &str)>,
    ) -> Result<Registry> {
        self.start_registry_with(addr, basic, None).await
    }

    /// Like [`Node::start_registry`], over HTTPS with a certificate signed by `tls.ca`.
    pub async fn start_tls_registry(&self, addr: &str, tls: RegistryTls<'_>) -> Result<Registry> {
        self.start_registry_with(addr, None, Some(tls)).await
    }

    async fn start_registry_with(
        &self,
        addr: &str,
        basic: Option<(&str, &str)>,
        tls: Option<RegistryTls<'_>>,
    ) -> Result<Registry> {
        let dir = self
            .dir()
            .join(format!("registry-{}", addr.replace([':', '.'], "-")));
        std::fs::create_dir_all(&dir)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        if let Some(tls) = tls {
            let d = tls.ca.dir.path();
            let name = if tls.wrong_name {
                "wrong-name"
            } else {
                "server"
            };
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                d.join(format!("{name}.pem")).display(),
                d.join(format!("{name}.key")).display()
            ));
            if tls.require_client_cert {
                config.push_str(&format!(
                    "    clientcas:\n      - {}\n",
                    tls.ca.ca().display()
                ));
            }
        }
        if let Some((user, password)) = basic {
            let htpasswd = dir.join("htpasswd");
            let out = std::process::Command::new("htpasswd")
                .args(["-B", "-b", "-c"])
                .arg(&htpasswd)
                .args([user, password])
                .output()
                .context("run htpasswd (apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: peapod-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let path = config_path.display().to_string();
        let process = self.spawn(&["docker-registry", "serve", &path])?;
        let (host, port) = addr.rsplit_once(':').context("addr is host:port")?;
        let probe = format!("exec 3<>/dev/tcp/{host}/{port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self
                .exec_output(&["bash", "-c", &probe])
                .await?
                .status
                .success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the registry on {addr} did not come up within 15s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Registry {
            addr: addr.to_owned(),
            dir,
            _process: process,
        })
    }

    /// `skopeo copy` of `ref_name` in the OCI layout `layout` to `dest` (`host:port/repo:tag`,
    /// plain HTTP or HTTPS without verification), inside the node; `--all` for an index with
    /// every platform.
    pub async fn push_image(
        &self,
        layout: &Path,
        ref_name: &str,
        dest: &str,
        creds: Option<&str>,
    ) -> Result<()> {
        self.skopeo_push(layout, ref_name, dest, creds, None).await
    }

    /// Like [`Node::push_image`], presenting `ca`'s client certificate.
    pub async fn push_image_with_cert(
        &self,
        layout: &Path,
        ref_name: &str,
        dest: &str,
        ca: &TestCa,
    ) -> Result<()> {
        self.skopeo_push(layout, ref_name, dest, None, Some(ca))
            .await
    }

    async fn skopeo_push(
        &self,
        layout: &Path,
        ref_name: &str,
        dest: &str,
        creds: Option<&str>,
        client_cert: Option<&TestCa>,
    ) -> Result<()> {
        let src = format!("oci:{}:{ref_name}", layout.display());
        let dest = format!("docker://{dest}");
        let mut args = vec![
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ];
        if let Some(c) = creds {
            args.extend(["--dest-creds", c]);
        }
        let cert_dir = client_cert.map(|ca| ca.client_dir().display().to_string());
        if let Some(d) = &cert_dir {
            args.extend(["--dest-cert-dir", d]);
        }
        args.extend([src.as_str(), dest.as_str()]);
        self.exec(&args).await.map(drop)
    }
}
