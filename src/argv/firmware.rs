//! The QEMU options that attach firmware chosen from QEMU's descriptors.

use std::{ffi::OsString, path::Path};

use crate::{
    host::firmware::{Device, Selected},
    plan::DescriptorFirmware,
    util::qemu_opt::escape,
};

/// The options for a plan's descriptor firmware: two pflash drives (read-only code, then the
/// VM's variable store) for flash firmware, `-bios` for memory firmware. Firmware that requires
/// SMM also gets its flash marked secure, so only SMM code can write the variables; the machine
/// needs [`Selected::machine_options`] for that. The plan checked the variable store against
/// the firmware ([`Selected::check_vars`]), so this only writes it down.
pub fn args(fw: &DescriptorFirmware) -> Vec<OsString> {
    flash_or_bios(&fw.selected, fw.vars.as_deref())
}

pub(crate) fn flash_or_bios(sel: &Selected, vars: Option<&Path>) -> Vec<OsString> {
    if sel.device == Device::Memory {
        return vec!["-bios".into(), sel.executable.clone().into_os_string()];
    }
    let drive = |unit: u8, file: &Path, tail: &str| {
        let mut s = OsString::from(format!("if=pflash,format={},unit={unit},file=", sel.format));
        s.push(escape(file.as_os_str()));
        s.push(tail);
        [OsString::from("-drive"), s]
    };
    let mut v = Vec::new();
    if sel.has_feature("requires-smm") {
        v.extend(["-global", "driver=cfi.pflash01,property=secure,value=on"].map(OsString::from));
    }
    v.extend(drive(0, &sel.executable, ",readonly=on"));
    if let Some(vars) = vars {
        v.extend(drive(1, vars, ""));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flash(features: &[&str], nvram: bool) -> Selected {
        Selected {
            descriptor: "/fw/60.json".into(),
            description: String::new(),
            device: Device::Flash,
            executable: "/fw/CODE,x.fd".into(),
            nvram_template: nvram.then(|| "/fw/VARS.fd".into()),
            format: "raw".into(),
            features: features.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The args of a firmware that passed its check, as a plan would carry it.
    fn qemu_args(
        sel: &Selected,
        vars: Option<&Path>,
    ) -> Result<Vec<OsString>, crate::host::firmware::FirmwareError> {
        sel.check_vars(vars)?;
        Ok(flash_or_bios(sel, vars))
    }

    #[test]
    fn args_for_split_flash_escape_commas() {
        let args = qemu_args(&flash(&[], true), Some(Path::new("/run/vm,1/v.fd"))).unwrap();
        assert_eq!(
            args,
            [
                "-drive",
                "if=pflash,format=raw,unit=0,file=/fw/CODE,,x.fd,readonly=on",
                "-drive",
                "if=pflash,format=raw,unit=1,file=/run/vm,,1/v.fd",
            ]
        );
        let smm = qemu_args(&flash(&["requires-smm"], true), Some(Path::new("/v"))).unwrap();
        assert_eq!(
            smm[..2],
            ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        );
        assert_eq!(qemu_args(&flash(&[], false), None).unwrap().len(), 2);
        let err = qemu_args(&flash(&[], true), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "firmware /fw/60.json needs a per-VM variable store"
        );
        assert!(qemu_args(&flash(&[], false), Some(Path::new("/v"))).is_err());
        let memory = Selected {
            device: Device::Memory,
            ..flash(&[], false)
        };
        assert_eq!(
            qemu_args(&memory, None).unwrap(),
            ["-bios", "/fw/CODE,x.fd"]
        );
    }
}
