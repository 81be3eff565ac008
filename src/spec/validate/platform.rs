//! What is emulated and by which program: the guest architecture (`--arch` and Nova's
//! `hw_emulation_architecture`/`hw_architecture`), the machine type and the QEMU binary.

use std::path::PathBuf;

use crate::{
    profile::ProfileSet,
    spec::{
        error::SpecError, input::SpecInput, nova::NovaProperties, validate::files,
        vm_spec::ArchChoice,
    },
};

impl SpecInput {
    /// The guest arch from `--arch` and the Nova properties, following Nova's precedence:
    /// `hw_emulation_architecture` names the guest and `hw_architecture` then the host;
    /// `hw_architecture` alone names a guest that must run natively.
    pub(super) fn arch_choice(
        &self,
        profiles: &ProfileSet,
        nova: &NovaProperties<'_>,
    ) -> Result<ArchChoice, SpecError> {
        let resolve = |field: &str, v: &str| profiles.resolve(field, v).map(|p| p.arch());
        let cli = self
            .arch
            .as_deref()
            .map(|a| resolve("arch", a))
            .transpose()?;
        let emulation = nova
            .emulation_architecture()
            .map(|a| resolve("hw_emulation_architecture", a))
            .transpose()?;
        let hw = nova
            .architecture()
            .map(|a| resolve("hw_architecture", a))
            .transpose()?;
        if let (Some(c), Some(e)) = (&cli, &emulation)
            && c != e
        {
            return Err(SpecError::Conflict {
                first: format!("--arch {c}"),
                second: format!("hw_emulation_architecture={e}"),
                why: "they name different guest architectures; give one".into(),
            });
        }
        Ok(match (cli, emulation, hw) {
            (_, Some(arch), host_required) => ArchChoice::Given {
                arch,
                field: "hw_emulation_architecture".into(),
                host_required,
            },
            (Some(arch), None, hw) => {
                if let Some(h) = hw
                    && h != arch
                {
                    return Err(SpecError::Conflict {
                        first: format!("--arch {arch}"),
                        second: format!("hw_architecture={h}"),
                        why: format!(
                            "hw_architecture names the guest arch unless hw_emulation_architecture is set; \
                             to emulate {arch} on a {h} host set hw_emulation_architecture={arch}"
                        ),
                    });
                }
                ArchChoice::Given {
                    arch,
                    field: "arch".into(),
                    host_required: None,
                }
            }
            (None, None, Some(arch)) => ArchChoice::NativeOnly { arch },
            (None, None, None) => ArchChoice::Host,
        })
    }

    /// The machine type from `--machine` or `hw_machine_type`; both only if they agree.
    pub(super) fn machine(&self, nova: &NovaProperties<'_>) -> Result<Option<String>, SpecError> {
        Ok(match (self.machine.as_deref(), nova.machine_type()) {
            (Some(m), Some(p)) if m != p => {
                return Err(SpecError::Conflict {
                    first: format!("--machine {m}"),
                    second: format!("hw_machine_type={p}"),
                    why: "they name different machine types; give one".into(),
                });
            }
            (Some(m), _) => Some(check_machine("machine", m)?),
            (None, Some(p)) => Some(check_machine("hw_machine_type", p)?),
            (None, None) => None,
        })
    }

    /// The QEMU binary, if given: it must be an executable file.
    pub(super) fn emulator(&self) -> Result<Option<PathBuf>, SpecError> {
        self.emulator.as_deref().map(files::executable).transpose()
    }
}

/// A machine type name goes into QEMU's `-machine` option list, so it may hold no `,` or `=`.
fn check_machine(field: &str, m: &str) -> Result<String, SpecError> {
    let ok = !m.is_empty()
        && m.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(m.to_owned())
    } else {
        Err(SpecError::Invalid {
            field: field.into(),
            value: m.into(),
            expected: "a QEMU machine type name (letters, digits, '.', '_', '-'), e.g. q35 or virt"
                .into(),
        })
    }
}
