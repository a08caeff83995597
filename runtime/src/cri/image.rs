//! Conversions shared by the image RPC adapters: image store → CRI messages.

use cri_api::v1 as cri;

use crate::image::ImageInfo;

pub fn image(i: &ImageInfo) -> cri::Image {
    let (uid, username) = user(&i.config.user);
    cri::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: i.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// The image config's `User` (`uid`, `name`, `uid:gid`, `name:group`) as CRI wants it: a
/// numeric uid, or else a user name; neither when the image names no user.
fn user(user: &str) -> (Option<cri::Int64Value>, String) {
    let name = user.split(':').next().unwrap_or_default();
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(value) => (Some(cri::Int64Value { value }), String::new()),
        Err(_) => (None, name.to_owned()),
    }
}

/// The image a request names (`ImageSpec.image`).
pub fn spec_image(spec: Option<&cri::ImageSpec>) -> &str {
    spec.map(|s| s.image.as_str()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_is_a_uid_or_a_name() {
        assert_eq!(user(""), (None, String::new()));
        assert_eq!(
            user("1000"),
            (Some(cri::Int64Value { value: 1000 }), String::new())
        );
        assert_eq!(
            user("1000:1000"),
            (Some(cri::Int64Value { value: 1000 }), String::new())
        );
        assert_eq!(user("app:staff"), (None, "app".to_owned()));
    }
}
