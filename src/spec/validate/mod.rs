//! [`SpecInput::validate`]: one step per concern, each in its own file, run in the order their
//! errors are reported (the first problem found is the one the user sees).

mod boot;
mod cpu;
mod devices;
mod files;
mod name;
mod platform;
mod qemu_args;
mod resources;

pub use name::check_name;

use crate::{
    profile::ProfileSet,
    spec::{error::SpecError, input::SpecInput, nova::NovaProperties, vm_spec::VmSpec},
};

impl SpecInput {
    /// Validates against the known architectures and the file system.
    pub fn validate(&self, profiles: &ProfileSet) -> Result<VmSpec, SpecError> {
        let nova = NovaProperties::check(&self.properties)?;
        let arch = self.arch_choice(profiles, &nova)?;
        let machine = self.machine(&nova)?;
        let memory = self.memory()?;
        let smp = self.smp()?;
        let name = self.name()?;
        let kernel = self.kernel_boot()?;
        let disks = self.disks()?;
        let net = self.net()?;
        let shares = self.shares()?;
        let firmware = self.firmware()?;
        let tb_size = self.tb_size()?;
        let emulator = self.emulator()?;
        let cpu = self.cpu_request(&nova)?;
        let qemu_args = self.qemu_args()?;
        let cloud_init = self.cloud_init()?;
        Ok(VmSpec {
            name,
            arch,
            accel: self.accel.unwrap_or_default(),
            machine,
            memory,
            smp,
            kernel,
            disks,
            net,
            agent: self.agent.unwrap_or(true),
            shares,
            firmware,
            tb_size,
            nested_virt: self.nested_virt.unwrap_or(false),
            emulator,
            cpu,
            qemu_args,
            cloud_init,
        })
    }
}

#[cfg(test)]
mod tests;
