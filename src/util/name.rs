//! Instance names: they become file names in the runtime directory and QEMU's `-name`.

/// What a valid name looks like, for error messages.
pub const RULE: &str = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit";

/// Whether `name` is a valid instance name ([`RULE`]): safe as one path component and inside
/// QEMU's option lists.
pub fn is_valid(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}
