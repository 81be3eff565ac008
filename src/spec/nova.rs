//! Nova image properties and flavor extra specs (`--property KEY=VALUE`, `[properties]`): which
//! keys are known, and what each says once checked.

use std::collections::BTreeMap;

use crate::{cpu::MaxPhysAddr, spec::error::SpecError};

/// Nova image properties qemu-direct understands, with what each means here.
pub const PROPERTIES: &[(&str, &str)] = &[
    (
        "hw_emulation_architecture",
        "guest arch to emulate on any host (wins over hw_architecture)",
    ),
    (
        "hw_architecture",
        "guest arch that must run natively; with hw_emulation_architecture, the host arch required",
    ),
    ("hw_machine_type", "QEMU machine type"),
    (
        "hw:maxphysaddr_mode",
        "flavor extra spec: guest physical-address bits, emulate or passthrough",
    ),
    (
        "hw:maxphysaddr_bits",
        "flavor extra spec: the bits for hw:maxphysaddr_mode=emulate",
    ),
];

/// Properties whose keys are all in [`PROPERTIES`] and whose values are not empty.
#[derive(Debug, Clone, Copy)]
pub(super) struct NovaProperties<'a>(&'a BTreeMap<String, String>);

impl<'a> NovaProperties<'a> {
    /// Checks every key is known and has a value; the first bad key, in key order, is the error.
    pub(super) fn check(properties: &'a BTreeMap<String, String>) -> Result<Self, SpecError> {
        for (k, v) in properties {
            if !PROPERTIES.iter().any(|(name, _)| name == k) {
                return Err(SpecError::Invalid {
                    field: "property".into(),
                    value: k.clone(),
                    expected: format!(
                        "unknown key; valid: {}",
                        PROPERTIES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            if v.is_empty() {
                return Err(SpecError::Invalid {
                    field: format!("property {k}"),
                    value: v.clone(),
                    expected: "a value is required".into(),
                });
            }
        }
        Ok(NovaProperties(properties))
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).map(String::as_str)
    }

    /// `hw_emulation_architecture`: the guest arch, emulated wherever need be.
    pub(super) fn emulation_architecture(&self) -> Option<&'a str> {
        self.get("hw_emulation_architecture")
    }

    /// `hw_architecture`: the guest arch to run natively, or with `hw_emulation_architecture`
    /// the host arch required.
    pub(super) fn architecture(&self) -> Option<&'a str> {
        self.get("hw_architecture")
    }

    /// `hw_machine_type`.
    pub(super) fn machine_type(&self) -> Option<&'a str> {
        self.get("hw_machine_type")
    }

    /// The flavor's `hw:maxphysaddr_mode` and `hw:maxphysaddr_bits` as one setting.
    pub(super) fn maxphysaddr(&self) -> Result<Option<MaxPhysAddr>, SpecError> {
        let (mode, bits) = match (
            self.get("hw:maxphysaddr_mode"),
            self.get("hw:maxphysaddr_bits"),
        ) {
            (None, None) => return Ok(None),
            (None, Some(b)) => {
                return Err(SpecError::Conflict {
                    first: format!("hw:maxphysaddr_bits={b}"),
                    second: "no hw:maxphysaddr_mode".into(),
                    why: "bits need hw:maxphysaddr_mode=emulate".into(),
                });
            }
            (Some(mode), bits) => (mode, bits),
        };
        let value = format!(
            "{mode}{}",
            bits.map(|b| format!(":{b}")).unwrap_or_default()
        );
        let bits = bits
            .map(|b| {
                b.trim().parse::<u8>().map_err(|_| SpecError::Invalid {
                    field: "property hw:maxphysaddr_bits".into(),
                    value: b.into(),
                    expected: "a whole number of bits, e.g. 42".into(),
                })
            })
            .transpose()?;
        if let Some(b) = bits
            && mode.trim().eq_ignore_ascii_case("passthrough")
        {
            return Err(SpecError::Conflict {
                first: "hw:maxphysaddr_mode=passthrough".into(),
                second: format!("hw:maxphysaddr_bits={b}"),
                why: "bits apply only with mode emulate (libvirt: cannot be used with mode='passthrough')".into(),
            });
        }
        Ok(Some(MaxPhysAddr::from_parts(
            "hw:maxphysaddr_mode",
            &value,
            mode,
            bits,
        )?))
    }
}
