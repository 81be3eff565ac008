//! What the guest is given: memory, vCPUs, and the TCG translation cache.

use crate::{
    spec::{error::SpecError, input::SpecInput},
    util::size::MemSize,
};

impl SpecInput {
    /// The memory size, if given, parsed.
    pub(super) fn memory(&self) -> Result<Option<MemSize>, SpecError> {
        self.memory
            .as_deref()
            .map(|m| {
                m.parse::<MemSize>().map_err(|e| SpecError::Invalid {
                    field: "memory".into(),
                    value: m.into(),
                    expected: e.to_string(),
                })
            })
            .transpose()
    }

    /// The vCPU count, if given: at least one.
    pub(super) fn smp(&self) -> Result<Option<u32>, SpecError> {
        if self.smp == Some(0) {
            return Err(SpecError::Invalid {
                field: "smp".into(),
                value: "0".into(),
                expected: "at least 1 vCPU".into(),
            });
        }
        Ok(self.smp)
    }

    /// The TCG translation cache in MiB, if given: at least one.
    pub(super) fn tb_size(&self) -> Result<Option<u32>, SpecError> {
        if self.tb_size == Some(0) {
            return Err(SpecError::Invalid {
                field: "tb_size".into(),
                value: "0".into(),
                expected: "the TCG translation cache in MiB, at least 1 (e.g. 128)".into(),
            });
        }
        Ok(self.tb_size)
    }
}
