//! JSON shapes shared by QEMU's two protocols (QMP and the guest agent).

use serde::Serialize;
use serde_json::Value;

/// The `arguments` member of a command: the command's fields as an object, or nothing when it
/// has none (QEMU refuses `"arguments": null`, and an empty object says nothing).
pub fn command_arguments<C: Serialize>(command: &C) -> Result<Option<Value>, serde_json::Error> {
    Ok(match serde_json::to_value(command)? {
        Value::Object(m) if m.is_empty() => None,
        Value::Null => None,
        a => Some(a),
    })
}
