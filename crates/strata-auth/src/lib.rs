//! Access control, one model for every API: users, roles, permissions and tokens.
//!
//! - [`Permission`]: a kind of resource ([`Kind`]: KV keys, registry services, config-center
//!   configs, and later gateway routes and monitor data), a key range over that kind's names,
//!   and what it allows ([`Access`]). Names are bytes: KV keys as they are, registry services as
//!   `NAMESPACE/SERVICE`, configs as `NAMESPACE/GROUP/DATA_ID`, so a prefix grant covers a
//!   namespace or a group.
//! - [`Role`]: named permissions. [`User`]: a password hash and roles. The role `root` allows
//!   everything.
//! - [`Grants`]: what a set of roles allows, checked with [`Grants::allows`]. A range request is
//!   allowed only when the granted ranges together cover all of it (as etcd checks).
//! - [`secret`]: argon2id password hashes, opaque tokens stored as SHA-256 digests, and
//!   constant-time comparison.
//! - [`state`]: the replicated records (users, roles, tokens), login and token
//!   authentication, and the throttle for failed logins.
//!
//! - [`gate`]: a node's live view of the records and the checks every API calls;
//!   [`admin`]: changes to the records, through the replicated store; [`audit`]: the audit log.
//! - [`kv`]: what a KV request needs, as etcd checks it.
//!
//! **Architecture Invariant:** nothing here knows a protocol; the APIs map their requests to
//! `(Kind, Access, range)` and their clients' credentials to a [`Caller`]. The records change
//! only through [`Auth`], which writes them with compare-and-set through the store's API.

pub mod admin;
pub mod audit;
pub mod gate;
pub mod guard;
pub mod kv;
pub mod secret;
pub mod state;

pub use admin::Auth;
pub use gate::{Caller, CertificateName, Gate};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use strata_proto::kv::prefix_end;

/// The role that allows everything.
pub const ROOT_ROLE: &str = "root";

/// What kind of resource a permission is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// KV keys.
    Kv,
    /// Registry services, named `NAMESPACE/SERVICE`.
    Registry,
    /// Config-center configs, named `NAMESPACE/GROUP/DATA_ID`.
    Config,
    /// Gateway routes, by name.
    Gateway,
    /// Monitoring data, by metric or dashboard name.
    Monitor,
}

/// What a permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Reads (and watches).
    Read,
    /// Writes (and deletes).
    Write,
    /// Both.
    ReadWrite,
}

impl Access {
    /// True when this grant allows `wanted` (which is `Read` or `Write`).
    pub fn covers(self, wanted: Access) -> bool {
        self == Access::ReadWrite || self == wanted
    }
}

/// A set of names: one name, a half-open range `[start, end)`, or every name from `start` on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Names {
    /// The name, or the first name of the range.
    pub start: Vec<u8>,
    /// `None`: only `start`. `Some(empty)`: every name `>= start`. Otherwise the exclusive end.
    pub end: Option<Vec<u8>>,
}

impl Names {
    /// Exactly one name.
    pub fn one(name: impl Into<Vec<u8>>) -> Self {
        Names {
            start: name.into(),
            end: None,
        }
    }

    /// Every name that starts with `prefix` (all names for an empty prefix).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        Names {
            start,
            end: Some(end),
        }
    }

    /// `[start, end)`, with etcd's conventions: an empty `end` is the single name `start`, and
    /// `end == [0]` means every name `>= start`.
    pub fn range(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        let start = start.into();
        let end = end.into();
        match end.as_slice() {
            [] => Names { start, end: None },
            [0] => Names {
                start,
                end: Some(Vec::new()),
            },
            _ => Names {
                start,
                end: Some(end),
            },
        }
    }

    /// The names as a half-open interval `[lo, hi)`; `hi == None` is unbounded. Empty when
    /// `hi <= lo`.
    fn interval(&self) -> Interval {
        match &self.end {
            None => {
                let mut next = self.start.clone();
                next.push(0);
                (self.start.clone(), Some(next))
            }
            Some(end) if end.is_empty() => (self.start.clone(), None),
            Some(end) => (self.start.clone(), Some(end.clone())),
        }
    }

    /// True when `name` is one of these names.
    pub fn contains(&self, name: &[u8]) -> bool {
        let (lo, hi) = self.interval();
        name >= lo.as_slice() && hi.is_none_or(|hi| name < hi.as_slice())
    }
}

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Permission {
    /// What kind of resource.
    pub kind: Kind,
    /// Which names.
    pub names: Names,
    /// What it allows.
    pub access: Access,
}

/// A named set of permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// The permissions.
    pub permissions: Vec<Permission>,
}

/// A user: a password hash (absent for certificate-only users) and roles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The argon2id hash in PHC format; `None` when the user cannot log in with a password.
    pub password_hash: Option<String>,
    /// Role names.
    pub roles: Vec<String>,
}

/// A half-open interval of names `[lo, hi)`; `hi == None` is unbounded.
type Interval = (Vec<u8>, Option<Vec<u8>>);

/// What a caller may do: the union of its roles' permissions. Built per request from the
/// replicated roles; `root` short-cuts every check.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    root: bool,
    /// Per kind and wanted access, the granted intervals, merged and sorted.
    intervals: BTreeMap<(Kind, bool), Vec<Interval>>,
}

impl Grants {
    /// Everything allowed.
    pub fn root() -> Self {
        Grants {
            root: true,
            intervals: BTreeMap::new(),
        }
    }

    /// The grants of `role_names`, looked up in `roles` (unknown names grant nothing).
    pub fn of(role_names: &[String], roles: &BTreeMap<String, Role>) -> Self {
        if role_names.iter().any(|r| r == ROOT_ROLE) {
            return Grants::root();
        }
        let mut raw: BTreeMap<(Kind, bool), Vec<Interval>> = BTreeMap::new();
        for role in role_names.iter().filter_map(|name| roles.get(name)) {
            for permission in &role.permissions {
                for (write, wanted) in [(false, Access::Read), (true, Access::Write)] {
                    if permission.access.covers(wanted) {
                        raw.entry((permission.kind, write))
                            .or_default()
                            .push(permission.names.interval());
                    }
                }
            }
        }
        let intervals = raw.into_iter().map(|(k, v)| (k, merge(v))).collect();
        Grants {
            root: false,
            intervals,
        }
    }

    /// True when this caller is root.
    pub fn is_root(&self) -> bool {
        self.root
    }

    /// True when every name in `names` of `kind` is granted `wanted` (`Read` or `Write`).
    pub fn allows(&self, kind: Kind, wanted: Access, names: &Names) -> bool {
        if self.root {
            return true;
        }
        let write = match wanted {
            Access::Read => false,
            Access::Write => true,
            // Both must hold.
            Access::ReadWrite => {
                return self.allows(kind, Access::Read, names)
                    && self.allows(kind, Access::Write, names)
            }
        };
        let Some(granted) = self.intervals.get(&(kind, write)) else {
            return false;
        };
        // Compared in place (this runs on every request): `names` is [lo, hi).
        let lo = names.start.as_slice();
        // `granted` is merged: disjoint, non-adjacent and sorted, so one interval must hold it.
        let held = |ends_within: &dyn Fn(Option<&[u8]>) -> bool| {
            granted
                .iter()
                .any(|(g_lo, g_hi)| g_lo.as_slice() <= lo && ends_within(g_hi.as_deref()))
        };
        match names.end.as_deref() {
            // One key: [lo, lo\0) ends within g_hi exactly when lo < g_hi.
            None => held(&|g_hi| g_hi.is_none_or(|g_hi| lo < g_hi)),
            // Everything from lo on.
            Some([]) => held(&|g_hi| g_hi.is_none()),
            // An empty range asks for nothing.
            Some(hi) if hi <= lo => true,
            Some(hi) => held(&|g_hi| g_hi.is_none_or(|g_hi| hi <= g_hi)),
        }
    }
}

/// Sorts and merges overlapping or touching intervals.
fn merge(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.retain(|(lo, hi)| hi.as_ref().is_none_or(|hi| hi > lo));
    intervals.sort();
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for (lo, hi) in intervals {
        if let Some((_, last_hi)) = merged.last_mut() {
            let touches = last_hi.as_ref().is_none_or(|last| &lo <= last);
            if touches {
                let grows = match (&*last_hi, &hi) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(last), Some(hi)) => hi > last,
                };
                if grows {
                    *last_hi = hi;
                }
                continue;
            }
        }
        merged.push((lo, hi));
    }
    merged
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn role(permissions: Vec<Permission>) -> BTreeMap<String, Role> {
        BTreeMap::from([("r".to_string(), Role { permissions })])
    }

    fn grant(kind: Kind, names: Names, access: Access) -> Permission {
        Permission {
            kind,
            names,
            access,
        }
    }

    #[test]
    fn a_prefix_grant_covers_its_keys_and_nothing_else() {
        let roles = role(vec![grant(
            Kind::Kv,
            Names::prefix("app/"),
            Access::ReadWrite,
        )]);
        let grants = Grants::of(&["r".into()], &roles);
        assert!(grants.allows(Kind::Kv, Access::Write, &Names::one("app/x")));
        assert!(grants.allows(Kind::Kv, Access::Read, &Names::prefix("app/a/")));
        assert!(!grants.allows(Kind::Kv, Access::Read, &Names::one("apq")));
        assert!(!grants.allows(Kind::Kv, Access::Read, &Names::prefix("app")));
        assert!(!grants.allows(Kind::Kv, Access::Read, &Names::range("app/", [0])));
        assert!(!grants.allows(Kind::Registry, Access::Read, &Names::one("app/x")));
    }

    #[test]
    fn read_and_write_are_separate_and_root_allows_everything() {
        let roles = role(vec![grant(
            Kind::Config,
            Names::prefix("public/"),
            Access::Read,
        )]);
        let grants = Grants::of(&["r".into()], &roles);
        assert!(grants.allows(Kind::Config, Access::Read, &Names::one("public/G/app.yaml")));
        assert!(!grants.allows(
            Kind::Config,
            Access::Write,
            &Names::one("public/G/app.yaml")
        ));
        let root = Grants::of(&["r".into(), ROOT_ROLE.into()], &roles);
        assert!(root.allows(Kind::Kv, Access::ReadWrite, &Names::prefix("")));
        assert!(!Grants::default().allows(Kind::Kv, Access::Read, &Names::one("k")));
    }

    #[test]
    fn a_range_is_allowed_when_adjacent_grants_cover_it_together() {
        let roles = role(vec![
            grant(Kind::Kv, Names::range("a", "c"), Access::Read),
            grant(Kind::Kv, Names::range("c", "e"), Access::Read),
            grant(Kind::Kv, Names::range("f", "g"), Access::Read),
        ]);
        let grants = Grants::of(&["r".into()], &roles);
        assert!(grants.allows(Kind::Kv, Access::Read, &Names::range("b", "d")));
        assert!(!grants.allows(Kind::Kv, Access::Read, &Names::range("b", "f")));
        assert!(!grants.allows(Kind::Kv, Access::Read, &Names::range("a", [0])));
    }

    const ALPHABET: &[u8] = b"ab\x00\xff";

    fn name() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(ALPHABET), 0..4)
    }

    fn names() -> impl Strategy<Value = Names> {
        prop_oneof![
            name().prop_map(Names::one),
            name().prop_map(Names::prefix),
            (name(), name()).prop_map(|(a, b)| Names::range(a, b)),
        ]
    }

    proptest! {
        /// No check ever allows a name outside the granted ranges: when a request is allowed,
        /// every name it covers (among all short names over the alphabet) is in some grant.
        #[test]
        fn nothing_outside_the_grants_is_ever_allowed(
            granted in prop::collection::vec(names(), 0..4),
            asked in names(),
        ) {
            let roles = role(granted.iter().cloned()
                .map(|n| grant(Kind::Kv, n, Access::Read)).collect());
            let grants = Grants::of(&["r".into()], &roles);
            if grants.allows(Kind::Kv, Access::Read, &asked) {
                let mut all = vec![Vec::new()];
                for _ in 0..4 {
                    let longer: Vec<Vec<u8>> = all.iter().flat_map(|n: &Vec<u8>| {
                        ALPHABET.iter().map(move |b| { let mut m = n.clone(); m.push(*b); m })
                    }).collect();
                    all.extend(longer);
                    all.sort();
                    all.dedup();
                }
                for candidate in all.iter().filter(|n| asked.contains(n)) {
                    prop_assert!(
                        granted.iter().any(|g| g.contains(candidate)),
                        "{candidate:?} allowed by {asked:?} but not granted by {granted:?}"
                    );
                }
            }
        }

        /// The in-place check decides exactly as the interval arithmetic it replaced.
        #[test]
        fn allows_agrees_with_interval_arithmetic(
            granted in prop::collection::vec(names(), 0..4),
            asked in names(),
        ) {
            let roles = role(granted.iter().cloned()
                .map(|n| grant(Kind::Kv, n, Access::Read)).collect());
            let grants = Grants::of(&["r".into()], &roles);
            let (lo, hi) = asked.interval();
            let expected = grants.intervals.get(&(Kind::Kv, false)).is_some_and(|granted| {
                hi.as_ref().is_some_and(|hi| hi <= &lo)
                    || granted.iter().any(|(g_lo, g_hi)| {
                        g_lo <= &lo
                            && match (g_hi, &hi) {
                                (None, _) => true,
                                (Some(_), None) => false,
                                (Some(g_hi), Some(hi)) => hi <= g_hi,
                            }
                    })
                });
            prop_assert_eq!(grants.allows(Kind::Kv, Access::Read, &asked), expected);
        }

        /// And a single granted name is always allowed.
        #[test]
        fn every_granted_name_is_allowed(granted in names(), probe in name()) {
            let roles = role(vec![grant(Kind::Kv, granted.clone(), Access::Write)]);
            let grants = Grants::of(&["r".into()], &roles);
            if granted.contains(&probe) {
                prop_assert!(grants.allows(Kind::Kv, Access::Write, &Names::one(probe)));
            }
        }
    }
}
