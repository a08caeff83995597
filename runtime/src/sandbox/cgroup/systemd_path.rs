//! systemd's names for cgroups, as cgroupfs paths: a slice name stands for the chain of
//! slices its dashes spell (`kubepods-besteffort-pod1.slice` is
//! `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice`), and an OCI
//! `linux.cgroupsPath` of the form `slice:prefix:name` for the scope `prefix-name.scope` in
//! that slice (or the slice `name`, when it is one).

use std::path::PathBuf;

/// The cgroup path (relative to the hierarchy's root) of the systemd slice `slice`.
pub fn expand_slice(slice: &str) -> Result<PathBuf, String> {
    let bad = |why: &str| Err(format!("{slice:?} is not a systemd slice name: {why}"));
    let Some(stem) = slice.strip_suffix(".slice") else {
        return bad("it must end in .slice");
    };
    if slice.contains('/') {
        return bad("it holds a /");
    }
    // The root slice.
    if stem == "-" {
        return Ok(PathBuf::new());
    }
    if stem.is_empty() || stem.split('-').any(str::is_empty) {
        return bad("an empty part between dashes");
    }
    let mut path = PathBuf::new();
    let mut unit = String::new();
    for part in stem.split('-') {
        if !unit.is_empty() {
            unit.push('-');
        }
        unit.push_str(part);
        path.push(format!("{unit}.slice"));
    }
    Ok(path)
}

/// The cgroup path of an OCI `linux.cgroupsPath` in systemd's `slice:prefix:name` form. An
/// empty slice is `system.slice`, as runc takes it.
pub fn from_oci(text: &str) -> Result<PathBuf, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(format!("{text:?} is not of the form slice:prefix:name"));
    };
    if name.is_empty() || name.contains('/') || prefix.contains('/') || name == ".." {
        return Err(format!("{text:?}: the name must be one path component"));
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let unit = match (name.ends_with(".slice"), prefix.is_empty()) {
        (true, _) => name.to_owned(),
        (false, true) => format!("{name}.scope"),
        (false, false) => format!("{prefix}-{name}.scope"),
    };
    Ok(expand_slice(slice)?.join(unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_along_their_dashes() {
        let p = expand_slice("kubepods-besteffort-pod1.slice").unwrap();
        assert_eq!(
            p,
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"
            )
        );
        assert_eq!(expand_slice("-.slice").unwrap(), PathBuf::new());
        assert_eq!(expand_slice("a.slice").unwrap(), PathBuf::from("a.slice"));
        for bad in [
            "a",
            ".slice",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "a/b.slice",
        ] {
            assert!(expand_slice(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oci_paths_name_a_scope_in_a_slice() {
        let p = from_oci("kubepods-burstable-pod1.slice:cri-containerd:abc").unwrap();
        assert_eq!(
            p,
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/\
                 cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            from_oci(":peapod:x").unwrap(),
            PathBuf::from("system.slice/peapod-x.scope")
        );
        assert_eq!(
            from_oci("a.slice::x").unwrap(),
            PathBuf::from("a.slice/x.scope")
        );
        assert_eq!(
            from_oci("a.slice::a-b.slice").unwrap(),
            PathBuf::from("a.slice/a-b.slice")
        );
        for bad in [
            "a.slice:x",
            "a.slice:p:",
            "a.slice:p:../x",
            "a:p:x",
            "a.slice:p:x:y",
        ] {
            assert!(from_oci(bad).is_err(), "{bad}");
        }
    }
}
