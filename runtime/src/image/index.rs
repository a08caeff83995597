//! `index.json`: the images the store holds, their names and what they are made of.

use serde::{Deserialize, Serialize};

use super::RunConfig;
use super::digest::{Digest, is_hex64};
use super::error::ImageError;
use super::reference::Reference;

pub const INDEX_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IndexDoc {
    pub version: u32,
    pub images: Vec<ImageRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config blob's digest.
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub manifest: Digest,
    pub layers: Vec<LayerRef>,
    /// Bytes of content: manifest, config and layer blobs.
    pub size: u64,
    pub run: RunConfig,
    /// When the store first got it (unix nanoseconds).
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub blob: Digest,
    pub media_type: String,
    pub size: u64,
    pub diff_id: Digest,
    pub chain_id: Digest,
}

impl ImageRecord {
    /// Every blob it needs: manifest, config, layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest, &self.id]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.blob))
    }

    fn has_name(&self, name: &str) -> bool {
        self.repo_tags.iter().any(|t| t == name) || self.repo_digests.iter().any(|d| d == name)
    }
}

/// How an image was named in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    Id(Digest),
    /// `name:tag` or `name@digest`, normalised.
    Name(String),
}

impl IndexDoc {
    pub fn by_id(&self, id: &Digest) -> Option<&ImageRecord> {
        self.images.iter().find(|r| r.id == *id)
    }

    /// Finds an image by id (`sha256:<hex>` or `<hex>`), by name (`name[:tag]`, normalised),
    /// by repo digest (`name@sha256:…`), or by a unique id prefix of at least 12 hex digits.
    pub fn lookup(&self, image: &str) -> Result<(&ImageRecord, Named), ImageError> {
        let not_found = || ImageError::NotFound {
            image: image.to_owned(),
        };
        let hex = image.strip_prefix("sha256:").unwrap_or(image);
        if is_hex64(hex) {
            let id = Digest::from_hex(hex).expect("64 hex digits");
            return self
                .by_id(&id)
                .map(|r| (r, Named::Id(id.clone())))
                .ok_or_else(not_found);
        }
        let parsed = Reference::parse(image);
        if let Ok(r) = &parsed {
            let name = r.digested().or_else(|| r.tagged()).expect("tag or digest");
            if let Some(rec) = self.images.iter().find(|rec| rec.has_name(&name)) {
                return Ok((rec, Named::Name(name)));
            }
        }
        if image.len() >= 12 && image.len() < 64 && image.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut hits = self.images.iter().filter(|r| r.id.hex().starts_with(image));
            match (hits.next(), hits.next()) {
                (Some(r), None) => return Ok((r, Named::Id(r.id.clone()))),
                (Some(_), Some(_)) => {
                    return Err(ImageError::InvalidReference {
                        reference: image.to_owned(),
                        reason: "the id prefix matches several images".into(),
                    });
                }
                _ => {}
            }
        }
        match parsed {
            Err(e) => Err(e),
            Ok(_) => Err(not_found()),
        }
    }

    /// Stores `new`: merged into the image with the same id if there is one (whose content
    /// — manifest, layer blobs — the newer one replaces: same config, same layers). Each of
    /// its tags moves here from any other image (which keeps its other names and stays
    /// listed).
    pub fn add(&mut self, new: ImageRecord) -> ImageRecord {
        for other in self.images.iter_mut().filter(|r| r.id != new.id) {
            other.repo_tags.retain(|t| !new.repo_tags.contains(t));
        }
        let Some(rec) = self.images.iter_mut().find(|r| r.id == new.id) else {
            self.images.push(new.clone());
            return new;
        };
        let mut merged = ImageRecord {
            repo_tags: std::mem::take(&mut rec.repo_tags),
            repo_digests: std::mem::take(&mut rec.repo_digests),
            created_at: rec.created_at,
            ..new.clone()
        };
        for t in new.repo_tags {
            if !merged.repo_tags.contains(&t) {
                merged.repo_tags.push(t);
            }
        }
        for d in new.repo_digests {
            if !merged.repo_digests.contains(&d) {
                merged.repo_digests.push(d);
            }
        }
        *rec = merged.clone();
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, tags: &[&str]) -> ImageRecord {
        ImageRecord {
            id: Digest::of(&[n]),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: vec![format!("docker.io/library/busybox@{}", Digest::of(&[n, n]))],
            manifest: Digest::of(&[n, n]),
            layers: Vec::new(),
            size: 1,
            run: RunConfig::default(),
            created_at: 0,
        }
    }

    #[test]
    fn lookup_by_every_kind_of_name() {
        let mut doc = IndexDoc::default();
        doc.add(rec(1, &["docker.io/library/busybox:latest"]));
        doc.add(rec(2, &["example.test/app:1"]));
        let id = Digest::of(&[1]);
        for q in [
            "busybox",
            "docker.io/library/busybox:latest",
            id.as_str(),
            id.hex(),
            &id.hex()[..12],
            &format!("busybox@{}", Digest::of(&[1, 1])),
        ] {
            let (r, _) = doc.lookup(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            assert_eq!(r.id, id, "{q}");
        }
        assert_eq!(
            doc.lookup("busybox").unwrap().1,
            Named::Name("docker.io/library/busybox:latest".into())
        );
        assert!(matches!(
            doc.lookup("busybox:2"),
            Err(ImageError::NotFound { .. })
        ));
        assert!(matches!(
            doc.lookup(&id.hex()[..11]),
            Err(ImageError::NotFound { .. })
        ));
        assert!(matches!(
            doc.lookup("Bad Name"),
            Err(ImageError::InvalidReference { .. })
        ));
    }

    #[test]
    fn a_tag_moves_to_the_newer_image() {
        let mut doc = IndexDoc::default();
        doc.add(rec(1, &["example.test/app:1", "example.test/app:stable"]));
        let merged = doc.add(rec(2, &["example.test/app:stable"]));
        assert_eq!(merged.repo_tags, ["example.test/app:stable"]);
        assert_eq!(
            doc.by_id(&Digest::of(&[1])).unwrap().repo_tags,
            ["example.test/app:1"]
        );
        let again = doc.add(rec(2, &["example.test/app:2"]));
        assert_eq!(
            again.repo_tags,
            ["example.test/app:stable", "example.test/app:2"]
        );
        assert_eq!(again.repo_digests.len(), 1);
        assert_eq!(doc.images.len(), 2);
    }
}
