//! Rendering errors for logs and gRPC messages: one line, with every source.

/// Any error with its sources, `: `-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Several errors, each with its sources, `; `-separated (for teardowns that carry on).
pub fn join_chains<E: std::error::Error>(errors: &[E]) -> String {
    errors
        .iter()
        .map(|e| chain(e))
        .collect::<Vec<_>>()
        .join("; ")
}

/// How a lookup by id or unique id prefix went wrong.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Empty,
    NotFound,
    Ambiguous,
}

/// The one key of `map` that is `id_or_prefix` or starts with it.
pub fn resolve_prefix<V>(
    map: &std::collections::HashMap<String, V>,
    id_or_prefix: &str,
) -> Result<String, Lookup> {
    if id_or_prefix.is_empty() {
        return Err(Lookup::Empty);
    }
    if map.contains_key(id_or_prefix) {
        return Ok(id_or_prefix.to_owned());
    }
    let mut hits = map.keys().filter(|k| k.starts_with(id_or_prefix));
    match (hits.next(), hits.next()) {
        (Some(id), None) => Ok(id.clone()),
        (Some(_), Some(_)) => Err(Lookup::Ambiguous),
        (None, _) => Err(Lookup::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_and_prefixes() {
        let e = std::io::Error::other("inner");
        assert_eq!(chain(&e), "inner");
        let keys: std::collections::HashMap<String, ()> = ["abc1", "abc2", "abd"]
            .into_iter()
            .map(|k| (k.to_owned(), ()))
            .collect();
        assert_eq!(resolve_prefix(&keys, "abd"), Ok("abd".into()));
        assert_eq!(resolve_prefix(&keys, "abc1"), Ok("abc1".into()));
        assert_eq!(resolve_prefix(&keys, "abc"), Err(Lookup::Ambiguous));
        assert_eq!(resolve_prefix(&keys, "x"), Err(Lookup::NotFound));
        assert_eq!(resolve_prefix(&keys, ""), Err(Lookup::Empty));
    }
}
