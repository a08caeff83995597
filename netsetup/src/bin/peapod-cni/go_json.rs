//! Object keys matched as Go's `encoding/json` matches them, for what runtimes written in Go
//! send: containerd's go-cni marshals `runtimeConfig.portMappings` from a struct without
//! JSON tags (`{"HostPort":8080,"ContainerPort":80,...}`), and Go plugins accept that because
//! `json.Unmarshal` matches a key to a field by its exact name, else case-insensitively
//! (Unicode simple folding: besides ASCII, `K` KELVIN SIGN folds to `k` and `ſ` LONG S to
//! `s`). Keys are taken in document order and a later one for the same field wins; a `null`
//! leaves the field as it was.
//!
//! A struct opts in with `#[serde(remote = "Self")]` (the derive then makes inherent
//! `deserialize`/`serialize` functions) and [`go_case!`], which implements the traits over
//! them, deserialising through [`GoObject`].

use std::collections::HashMap;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};
use serde_json::{Map, Value};

/// Implements `Deserialize` (keys matched as Go does) for a struct that derives it with
/// `#[serde(remote = "Self")]`; with `, Serialize` also `Serialize`, as derived.
macro_rules! go_case {
    ($t:ty) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let object = crate::go_json::GoObject::deserialize(d)?;
                <$t>::deserialize(object).map_err(serde::de::Error::custom)
            }
        }
    };
    ($t:ty, Serialize) => {
        crate::go_json::go_case!($t);
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$t>::serialize(self, s)
            }
        }
    };
}
pub(crate) use go_case;

/// A JSON object whose keys are one per field: of keys equal under Go's folding, the last
/// in the document (a `null` does not replace an earlier value; Go leaves the field as is).
/// As a deserializer of a struct, its keys are renamed to the fields they fold to. None of
/// the structs here has two fields equal under folding, so this is Go's rule (an exact match
/// preferred, else a case-insensitive one; a later key wins).
#[derive(Debug)]
pub struct GoObject(Map<String, Value>);

impl<'de> Deserialize<'de> for GoObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_map(Folding)? {
            Value::Object(map) => Ok(GoObject(map)),
            _ => Err(de::Error::invalid_type(
                Unexpected::Other("not an object"),
                &"a JSON object",
            )),
        }
    }
}

/// Reads any JSON value, keeping the last of keys equal under folding at every level (in
/// document order, which a parsed `Value` no longer has).
struct Folding;

impl<'de> Visitor<'de> for Folding {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(Folding)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Folded(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        // Folded key → the key it is in `object` under.
        let mut keys = HashMap::new();
        while let Some((key, Folded(value))) = map.next_entry::<String, Folded>()? {
            if let Some(earlier) = keys.get(&fold(&key)) {
                if value.is_null() {
                    continue;
                }
                object.remove(earlier);
            }
            keys.insert(fold(&key), key.clone());
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

struct Folded(Value);

impl<'de> Deserialize<'de> for Folded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Folding).map(Folded)
    }
}

impl GoObject {
    /// The object with each key renamed to the field it folds to, without nulls.
    fn matched(self, fields: &[&str]) -> Value {
        let object = self
            .0
            .into_iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(key, value)| {
                let folded = fold(&key);
                match fields.iter().find(|f| fold(f) == folded) {
                    Some(field) => ((*field).to_owned(), value),
                    None => (key, value),
                }
            });
        Value::Object(object.collect())
    }
}

impl<'de> Deserializer<'de> for GoObject {
    type Error = serde_json::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.matched(fields)
            .deserialize_struct(name, fields, visitor)
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.matched(&[]).deserialize_any(visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The member of a JSON object that a Go struct field named `name` would take: the key
/// equal to it under folding (objects read here hold one such key at most, see [`GoObject`]).
pub fn get<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    let folded = fold(name);
    object
        .as_object()?
        .iter()
        .find_map(|(key, value)| (fold(key) == folded).then_some(value))
}

/// A key as Go's folding sees it: keys equal under Unicode simple folding are equal here as
/// far as letters that fold to ASCII go (ASCII letters, `K` KELVIN SIGN, `ſ` LONG S); other
/// characters stay as they are, and no ASCII field name folds to them.
fn fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{212A}' => 'k',
            '\u{17F}' => 's',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fold_eq(key: &str, field: &str) -> bool {
        fold(key) == fold(field)
    }

    #[test]
    fn keys_fold_as_go_folds_them() {
        assert!(fold_eq("HostPort", "hostPort"));
        assert!(fold_eq("HOSTPORT", "hostPort"));
        assert!(fold_eq("hostport", "hostPort"));
        assert!(fold_eq("hOsTpOrT", "hostPort"));
        assert!(fold_eq("HostIP", "hostIP"));
        assert!(fold_eq(
            "CNI.dev/Valid-Attachments",
            "cni.dev/valid-attachments"
        ));
        // KELVIN SIGN and LONG S fold to ASCII letters in Go, nothing else does.
        assert!(fold_eq("\u{212A}ind", "kind"));
        assert!(fold_eq("ho\u{17F}tPort", "hostPort"));
        assert!(!fold_eq("hostPor", "hostPort"));
        assert!(!fold_eq("hostPortx", "hostPort"));
        assert!(!fold_eq("host_port", "hostPort"));
        assert!(!fold_eq("hóstPort", "hostPort"));
    }

    fn object(text: &str) -> GoObject {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_last_key_wins_at_every_level_and_null_changes_nothing() {
        let o =
            object(r#"{"ab":1,"AB":2,"zz":{"x":[{"Q":1,"q":2}],"X":[]},"n":5,"N":null,"m":null}"#);
        assert_eq!(
            o.matched(&["ab", "n", "m"]),
            json!({"ab": 2, "zz": {"X": []}, "n": 5})
        );
        let o = object(r#"{"zz":{"x":[{"Q":1,"q":2}]}}"#);
        assert_eq!(o.matched(&[]), json!({"zz": {"x": [{"q": 2}]}}));
        assert!(serde_json::from_str::<GoObject>("[1]").is_err());
    }

    #[test]
    fn get_finds_a_member_in_any_case() {
        let v = json!({"IPs": [{"Address": "10.0.0.2/24"}]});
        let ip = &get(&v, "ips").unwrap()[0];
        assert_eq!(get(ip, "address").unwrap(), "10.0.0.2/24");
        assert!(get(&v, "routes").is_none());
        assert!(get(&json!([1]), "ips").is_none());
    }
}
