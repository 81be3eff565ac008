//! The instance name.

use crate::{
    spec::{error::SpecError, input::SpecInput},
    util::name,
};

impl SpecInput {
    /// The name, if given, once checked.
    pub(super) fn name(&self) -> Result<Option<String>, SpecError> {
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        Ok(self.name.clone())
    }
}

/// Checks an instance name: it becomes part of file names and QEMU's `-name`.
pub fn check_name(name: &str) -> Result<(), SpecError> {
    if name::is_valid(name) {
        Ok(())
    } else {
        Err(SpecError::Invalid {
            field: "name".into(),
            value: name.into(),
            expected: name::RULE.into(),
        })
    }
}
