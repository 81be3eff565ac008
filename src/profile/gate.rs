//! Options that only some QEMU versions, or only some hosts, should get.
//!
//! Machine profiles write every machine, CPU and accelerator option as a [`ProfileOption`]:
//! either a plain `"key=value"`, which always applies, or a table with conditions,
//!
//! ```toml
//! cpu_options = [{ option = "pauth-impdef=on", min_qemu = "6.0", below_qemu = "10.0", why = "the default from 10.0" }]
//! accel_options = [{ option = "thread=multi", hosts = ["x86_64", "i686", "s390x"] }]
//! ```
//!
//! `min_qemu` is the first QEMU that has the option (older ones refuse to start with it);
//! `below_qemu` the first that no longer wants it; `hosts` the host arches where it applies.
//! [`Gate::check`] says whether an option applies and, when not, why, in words that end up in
//! the plan's notes. An option the user asked for explicitly is checked with
//! [`Gate::check_explicit`] against the profile's conditions for the same key, and refused
//! instead of being left out.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A QEMU version, `major.minor[.micro]`; compared numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QemuVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro (patch level); 0 when not written.
    pub micro: u32,
}

impl QemuVersion {
    /// `major.minor.micro`.
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }
}

impl FromStr for QemuVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a QEMU version (write e.g. 7.2 or 7.2.22)");
        let parts: Vec<&str> = s.trim().split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        let num = |p: &str| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u32>().ok())
                .flatten()
                .ok_or_else(bad)
        };
        Ok(QemuVersion {
            major: num(parts[0])?,
            minor: num(parts[1])?,
            micro: parts.get(2).map(|p| num(p)).transpose()?.unwrap_or(0),
        })
    }
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.micro == 0 {
            write!(f, "{}.{}", self.major, self.minor)
        } else {
            write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
        }
    }
}

impl Serialize for QemuVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for QemuVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A `key=value` QEMU option from a machine profile and the conditions under which it applies.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileOption {
    /// `key=value`, as QEMU takes it inside `-machine`, `-cpu` or `-accel`.
    pub option: String,
    /// The first QEMU version that has the option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_qemu: Option<QemuVersion>,
    /// The first QEMU version that no longer wants it (it became the default, or went away).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_qemu: Option<QemuVersion>,
    /// Host arches (profile names) on which it applies; empty: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Why the conditions are what they are, shown when the option is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl ProfileOption {
    /// An option with no conditions.
    pub fn plain(option: impl Into<String>) -> Self {
        ProfileOption {
            option: option.into(),
            min_qemu: None,
            below_qemu: None,
            hosts: Vec::new(),
            why: None,
        }
    }

    /// The part before `=`.
    pub fn key(&self) -> &str {
        key(&self.option)
    }

    fn is_plain(&self) -> bool {
        self.min_qemu.is_none() && self.below_qemu.is_none() && self.hosts.is_empty()
    }
}

/// The key of a `key=value` option.
pub fn key(option: &str) -> &str {
    option.split_once('=').map_or(option, |(k, _)| k)
}

/// A profile option is written as a plain string or as a table: this reads both, and keeps the
/// table's own errors (an unknown key names itself and the line).
pub(crate) fn deserialize_options<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<ProfileOption>, D::Error> {
    struct OneOption;
    impl<'de> de::Visitor<'de> for OneOption {
        type Value = ProfileOption;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("\"key=value\" or { option = \"key=value\", min_qemu = ..., ... }")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<ProfileOption, E> {
            Ok(ProfileOption::plain(v))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ProfileOption, A::Error> {
            ProfileOption::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    struct Wrapped(ProfileOption);
    impl<'de> Deserialize<'de> for Wrapped {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(OneOption).map(Wrapped)
        }
    }
    Ok(Vec::<Wrapped>::deserialize(d)?
        .into_iter()
        .map(|w| w.0)
        .collect())
}

/// Writes plain options back as strings, the others as tables.
pub(crate) fn serialize_options<S: Serializer>(
    options: &[ProfileOption],
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Out<'a> {
        Plain(&'a str),
        Full(&'a ProfileOption),
    }
    s.collect_seq(options.iter().map(|o| {
        if o.is_plain() {
            Out::Plain(&o.option)
        } else {
            Out::Full(o)
        }
    }))
}

/// What options are checked against: the QEMU that will run and the host it runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gate<'a> {
    /// The emulator's version; `None` when unknown, and then no version condition is checked.
    pub qemu: Option<QemuVersion>,
    /// The host's arch (profile name); `None` when unknown, and then host conditions fail.
    pub host: Option<&'a str>,
}

/// Why an option does not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// The QEMU is older than the option.
    TooOld {
        /// The first version with it.
        needs: QemuVersion,
        /// The installed one.
        have: QemuVersion,
    },
    /// The QEMU is at or past the version that no longer wants it.
    TooNew {
        /// The first version that no longer wants it.
        below: QemuVersion,
        /// The installed one.
        have: QemuVersion,
    },
    /// Not for this host.
    Host {
        /// The hosts it is for.
        hosts: Vec<String>,
        /// This host, if known.
        host: Option<String>,
    },
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::TooOld { needs, have } => write!(f, "needs QEMU >= {needs}, this is {have}"),
            Unfit::TooNew { below, have } => {
                write!(f, "is only for QEMU < {below}, this is {have}")
            }
            Unfit::Host { hosts, host } => write!(
                f,
                "applies on {} hosts only, this host is {}",
                hosts.join(", "),
                host.as_deref().unwrap_or("unknown")
            ),
        }
    }
}

impl Gate<'_> {
    /// Whether `opt` applies here.
    pub fn check(&self, opt: &ProfileOption) -> Result<(), Unfit> {
        self.check_version(opt)?;
        if !opt.hosts.is_empty() && !self.host.is_some_and(|h| opt.hosts.iter().any(|x| x == h)) {
            return Err(Unfit::Host {
                hosts: opt.hosts.clone(),
                host: self.host.map(str::to_owned),
            });
        }
        Ok(())
    }

    fn check_version(&self, opt: &ProfileOption) -> Result<(), Unfit> {
        let Some(have) = self.qemu else {
            return Ok(());
        };
        if let Some(needs) = opt.min_qemu.filter(|m| have < *m) {
            return Err(Unfit::TooOld { needs, have });
        }
        if let Some(below) = opt.below_qemu.filter(|b| have >= *b) {
            return Err(Unfit::TooNew { below, have });
        }
        Ok(())
    }

    /// Splits `options` into those that apply and, for the others, a note each:
    /// `left out: <what> <option>: <why>`.
    pub fn filter(&self, what: &str, options: &[ProfileOption]) -> (Vec<String>, Vec<String>) {
        let mut kept = Vec::new();
        let mut notes = Vec::new();
        for o in options {
            match self.check(o) {
                Ok(()) => kept.push(o.option.clone()),
                Err(why) => notes.push(format!(
                    "left out: {what} {}: {why}{}",
                    o.option,
                    o.why
                        .as_ref()
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default()
                )),
            }
        }
        (kept, notes)
    }

    /// Checks an option the user asked for against the profile's version conditions for the
    /// same key, if the profile has any; host conditions are the profile's choice of default
    /// and do not bind the user. `Err` says why the installed QEMU cannot have it.
    pub fn check_explicit(&self, option: &str, profile: &[ProfileOption]) -> Result<(), Unfit> {
        match profile.iter().find(|p| p.key() == key(option)) {
            Some(p) => self.check_version(p),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> QemuVersion {
        s.parse().unwrap()
    }

    fn opt(toml_text: &str) -> Vec<ProfileOption> {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "deserialize_options")]
            o: Vec<ProfileOption>,
        }
        toml::from_str::<T>(toml_text).unwrap().o
    }

    #[test]
    fn versions_parse_and_compare_numerically() {
        assert_eq!(v("7.2.22"), QemuVersion::new(7, 2, 22));
        assert_eq!(v("10.0"), QemuVersion::new(10, 0, 0));
        assert!(v("10.0") > v("9.2.3"));
        assert!(v("7.2.22") > v("7.2"));
        assert!(v("2.9") < v("2.10"));
        assert_eq!(v("7.2").to_string(), "7.2");
        assert_eq!(v("7.2.22").to_string(), "7.2.22");
        for bad in ["7", "7.x", "", "7.2.1.1", "-1.2", "7..2"] {
            assert!(bad.parse::<QemuVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn options_read_as_strings_or_tables() {
        let o = opt(
            r#"o = ["gic-version=max", { option = "pauth-impdef=on", min_qemu = "6.0", below_qemu = "10.0", why = "the default from 10.0" }]"#,
        );
        assert_eq!(o[0], ProfileOption::plain("gic-version=max"));
        assert_eq!(o[1].min_qemu, Some(v("6.0")));
        assert_eq!(o[1].below_qemu, Some(v("10.0")));
        assert_eq!(o[1].key(), "pauth-impdef");
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "deserialize_options")]
            #[allow(dead_code)]
            o: Vec<ProfileOption>,
        }
        let e = toml::from_str::<T>(r#"o = [{ option = "a=b", min_qmeu = "6.0" }]"#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("min_qmeu"), "{e}");
        let e = toml::from_str::<T>(r#"o = [{ option = "a=b", min_qemu = "six" }]"#)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("'six' is not a QEMU version"), "{e}");
    }

    #[test]
    fn options_write_back_as_they_were_read() {
        #[derive(Serialize)]
        struct T<'a> {
            #[serde(serialize_with = "serialize_options")]
            o: &'a [ProfileOption],
        }
        let o = opt(r#"o = ["a=b", { option = "c=d", min_qemu = "5.0" }]"#);
        let json = serde_json::to_string(&T { o: &o }).unwrap();
        assert_eq!(json, r#"{"o":["a=b",{"option":"c=d","min_qemu":"5.0"}]}"#);
    }

    #[test]
    fn gates_by_version_range_and_host() {
        let o = opt(r#"o = [
                "always=on",
                { option = "new=on", min_qemu = "8.0" },
                { option = "old=on", below_qemu = "10.0", why = "the default from 10.0" },
                { option = "thread=multi", hosts = ["x86_64", "s390x"] },
            ]"#);
        let at = |q: &str, host: &'static str| Gate {
            qemu: Some(v(q)),
            host: Some(host),
        };
        let (kept, notes) = at("7.2.22", "x86_64").filter("accel option", &o);
        assert_eq!(kept, ["always=on", "old=on", "thread=multi"]);
        assert_eq!(
            notes,
            ["left out: accel option new=on: needs QEMU >= 8.0, this is 7.2.22"]
        );
        let (kept, notes) = at("10.0", "aarch64").filter("cpu option", &o);
        assert_eq!(kept, ["always=on", "new=on"]);
        assert_eq!(
            notes,
            [
                "left out: cpu option old=on: is only for QEMU < 10.0, this is 10.0 (the default from 10.0)",
                "left out: cpu option thread=multi: applies on x86_64, s390x hosts only, this host is aarch64",
            ]
        );
        // The boundaries: min is inclusive, below exclusive.
        assert!(at("8.0", "x86_64").check(&o[1]).is_ok());
        assert!(at("9.2.99", "x86_64").check(&o[2]).is_ok());
        // Unknown version: no version condition is checked; unknown host: host conditions fail.
        let unknown = Gate {
            qemu: None,
            host: None,
        };
        let (kept, notes) = unknown.filter("x", &o);
        assert_eq!(kept, ["always=on", "new=on", "old=on"]);
        assert!(notes[0].ends_with("this host is unknown"), "{notes:?}");
    }

    #[test]
    fn explicit_options_follow_the_profiles_version_range_for_their_key() {
        let o = opt(r#"o = [{ option = "tb-size=256", min_qemu = "5.0", hosts = ["x86_64"] }]"#);
        let old = Gate {
            qemu: Some(v("4.2.1")),
            host: Some("aarch64"),
        };
        assert_eq!(
            old.check_explicit("tb-size=64", &o)
                .unwrap_err()
                .to_string(),
            "needs QEMU >= 5.0, this is 4.2.1"
        );
        let new = Gate {
            qemu: Some(v("5.0")),
            host: Some("aarch64"),
        };
        // Host conditions do not bind the user.
        assert!(new.check_explicit("tb-size=64", &o).is_ok());
        assert!(old.check_explicit("other=1", &o).is_ok());
    }
}
