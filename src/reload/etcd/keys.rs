//! The key layout under a prefix (SPEC §3.1): `{prefix}deployments/{id}`
//! holds one deployment object, `{prefix}policies/{id}` one policy object.
//! Shared by the follower (which reads keys) and `portcullis publish`
//! (which writes them), so the two cannot disagree.

const DEPLOYMENTS: &str = "deployments/";
const POLICIES: &str = "policies/";

/// What one key under the prefix holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Deployment,
    Policy,
}

impl Kind {
    fn folder(self) -> &'static str {
        match self {
            Self::Deployment => DEPLOYMENTS,
            Self::Policy => POLICIES,
        }
    }

    /// `deployment` or `policy`, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::Policy => "policy",
        }
    }
}

/// A key under the prefix, understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryKey<'a> {
    pub kind: Kind,
    /// Must equal the object's `id`.
    pub id: &'a str,
}

/// Why a key under the prefix names no entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not under the prefix")]
    OutsidePrefix,
    #[error("not UTF-8")]
    NotUtf8,
    #[error("neither deployments/{{id}} nor policies/{{id}}")]
    Unknown,
    #[error("the id after {0} is empty")]
    EmptyId(&'static str),
}

/// Reads `key` (raw etcd bytes) as an entry under `prefix`.
pub fn parse<'a>(prefix: &str, key: &'a [u8]) -> Result<EntryKey<'a>, KeyError> {
    let rest = key
        .strip_prefix(prefix.as_bytes())
        .ok_or(KeyError::OutsidePrefix)?;
    let rest = std::str::from_utf8(rest).map_err(|_| KeyError::NotUtf8)?;
    for kind in [Kind::Deployment, Kind::Policy] {
        if let Some(id) = rest.strip_prefix(kind.folder()) {
            if id.is_empty() {
                return Err(KeyError::EmptyId(kind.folder()));
            }
            return Ok(EntryKey { kind, id });
        }
    }
    Err(KeyError::Unknown)
}

/// The key of entry `id` of `kind` under `prefix`.
pub fn key(prefix: &str, kind: Kind, id: &str) -> String {
    let folder = kind.folder();
    let mut k = String::with_capacity(prefix.len() + folder.len() + id.len());
    k.push_str(prefix);
    k.push_str(folder);
    k.push_str(id);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for kind in [Kind::Deployment, Kind::Policy] {
            let k = key("/portcullis/", kind, "abc");
            assert_eq!(
                parse("/portcullis/", k.as_bytes()),
                Ok(EntryKey { kind, id: "abc" })
            );
        }
    }

    #[test]
    fn other_keys_are_refused_with_a_reason() {
        let cases: &[(&[u8], KeyError)] = &[
            (b"/other/deployments/a", KeyError::OutsidePrefix),
            (b"/p/deployments/\xff", KeyError::NotUtf8),
            (b"/p/settings", KeyError::Unknown),
            (b"/p/policies/", KeyError::EmptyId(POLICIES)),
        ];
        for (k, want) in cases {
            assert_eq!(parse("/p/", k).as_ref(), Err(want), "{k:?}");
        }
    }
}
