//! How the guest boots: a direct kernel boot (kernel, initrd, command line) and the firmware.

use crate::spec::{
    error::SpecError,
    input::SpecInput,
    validate::files::readable_file,
    vm_spec::{FirmwareChoice, KernelBoot},
};

impl SpecInput {
    /// The direct kernel boot, if a kernel is given; an initrd or command line without one is
    /// refused, not ignored.
    pub(super) fn kernel_boot(&self) -> Result<Option<KernelBoot>, SpecError> {
        let kernel = match &self.kernel {
            Some(k) => Some(KernelBoot {
                kernel: readable_file("kernel", k)?,
                initrd: self
                    .initrd
                    .as_deref()
                    .map(|i| readable_file("initrd", i))
                    .transpose()?,
                append: self.append.clone(),
            }),
            None => {
                for (field, set) in [
                    ("initrd", self.initrd.is_some()),
                    ("append", self.append.is_some()),
                ] {
                    if set {
                        return Err(SpecError::Conflict {
                            first: field.into(),
                            second: "no kernel".into(),
                            why: format!(
                                "{field} only applies to a direct kernel boot; add --kernel"
                            ),
                        });
                    }
                }
                None
            }
        };
        self.check_append()?;
        Ok(kernel)
    }

    /// The command line goes to QEMU's `-append` as one argument and to the guest as one line.
    fn check_append(&self) -> Result<(), SpecError> {
        if let Some(append) = &self.append
            && (append.contains('\n') || append.contains('\0'))
        {
            return Err(SpecError::Invalid {
                field: "append".into(),
                value: append.escape_default().to_string(),
                expected: "one line without NUL bytes".into(),
            });
        }
        Ok(())
    }

    /// The firmware: `uefi` or `bios` by kind, else a file; Secure Boot only with UEFI.
    pub(super) fn firmware(&self) -> Result<Option<FirmwareChoice>, SpecError> {
        let firmware = self
            .firmware
            .as_deref()
            .map(|f| {
                Ok::<_, SpecError>(match FirmwareChoice::keyword(f) {
                    Some("uefi") => FirmwareChoice::Uefi {
                        secure_boot: self.secure_boot.unwrap_or(false),
                    },
                    Some(_) => FirmwareChoice::Bios,
                    None => FirmwareChoice::File {
                        path: readable_file("firmware", f)?,
                    },
                })
            })
            .transpose()?;
        if self.secure_boot == Some(true) && !matches!(firmware, Some(FirmwareChoice::Uefi { .. }))
        {
            return Err(SpecError::Conflict {
                first: "secure_boot".into(),
                second: match &self.firmware {
                    Some(f) => format!("firmware {}", f.display()),
                    None => "no firmware".into(),
                },
                why: "Secure Boot is a UEFI feature; add --firmware uefi".into(),
            });
        }
        Ok(firmware)
    }
}
