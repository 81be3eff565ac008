//! An outgoing migration from a running QEMU, over its QMP connection: to a file (a
//! snapshot's stream) or to a Unix socket (a live migration), waited for to the end.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    SnapshotError,
    method::{IGNORE_SHARED, Transport},
};
use crate::qmp::Qmp;

/// How often `query-migrate` is asked while a migration runs.
const POLL: Duration = Duration::from_millis(5);
/// A QMP command gets this long to answer.
const CALL: Duration = Duration::from_secs(10);
/// The bandwidth cap set for our migrations, bytes per second: none to speak of. QEMU's
/// default (32 MiB/s, for migrations over networks) makes a local save four times slower.
const BANDWIDTH: u64 = 1 << 40;

/// What QEMU reports of a finished migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// From `migrate` to completion.
    pub total: Duration,
    /// How long the guest was stopped at the end (QEMU's `downtime`).
    pub downtime: Duration,
    /// Bytes sent.
    pub bytes: u64,
}

/// The URI that writes a stream to `file`.
pub(super) fn file_uri(transport: Transport, file: &Path) -> Result<String, SnapshotError> {
    let text = file.to_str().ok_or_else(|| SnapshotError::Io {
        action: "QEMU's migration URIs take UTF-8 paths only, not",
        path: file.to_owned(),
        source: std::io::Error::other("not UTF-8"),
    })?;
    Ok(match transport {
        Transport::File => format!("file:{text}"),
        Transport::Exec => {
            // QEMU runs this with /bin/sh -c: the path is quoted for it.
            let quoted = shlex::try_quote(text).map_err(|e| SnapshotError::Io {
                action: "cannot quote for the shell",
                path: file.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?;
            format!("exec:cat > {quoted}")
        }
    })
}

/// Migrates to `uri` with `capabilities` on (and the others we use off) and no bandwidth
/// cap, and waits for the end.
/// `what` names the migration in errors; `file`, for a stream to a file, is where a full file
/// system is looked for when it fails.
pub(super) async fn migrate(
    qmp: &Qmp,
    name: &str,
    uri: &str,
    capabilities: &[String],
    what: &str,
    file: Option<&Path>,
) -> Result<Stats, SnapshotError> {
    // Capabilities outlive a migration: a restored guest still has those its state was
    // read with, which would change how its stream is written.
    let caps: Vec<Value> = [IGNORE_SHARED]
        .iter()
        .map(|c| json!({"capability": c, "state": capabilities.iter().any(|x| x == c)}))
        .collect();
    call(
        qmp,
        name,
        "migrate-set-capabilities",
        json!({ "capabilities": caps }),
    )
    .await?;
    call(
        qmp,
        name,
        "migrate-set-parameters",
        json!({ "max-bandwidth": BANDWIDTH }),
    )
    .await?;
    let start = Instant::now();
    call(qmp, name, "migrate", json!({ "uri": uri })).await?;
    loop {
        let info = call(qmp, name, "query-migrate", json!({})).await?;
        match info.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok(stats(&info, start.elapsed())),
            Some(s @ ("failed" | "cancelled")) => {
                let desc = info.get("error-desc").and_then(Value::as_str);
                return Err(SnapshotError::Migration {
                    what: what.to_owned(),
                    why: desc.map_or_else(|| format!("QEMU says {s}"), |d| format!("QEMU: {d}")),
                    free: file.and_then(low_space),
                });
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

fn stats(info: &Value, total: Duration) -> Stats {
    let ms = |k: &str| {
        info.get(k)
            .and_then(Value::as_u64)
            .map(Duration::from_millis)
    };
    Stats {
        total: ms("total-time").unwrap_or(total),
        downtime: ms("downtime").unwrap_or_default(),
        bytes: info
            .pointer("/ram/transferred")
            .and_then(Value::as_u64)
            .unwrap_or_default(),
    }
}

/// The bytes free on `file`'s file system, if little enough (under 64 MiB) to be why a write
/// there failed.
pub(super) fn low_space(file: &Path) -> Option<u64> {
    let dir = file.parent()?;
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    (free < 64 << 20).then_some(free)
}

/// Runs a QMP command on the instance `name`, with [`CALL`] to answer.
pub(super) async fn call(
    qmp: &Qmp,
    name: &str,
    command: &str,
    args: Value,
) -> Result<Value, SnapshotError> {
    let args = match &args {
        Value::Object(m) if m.is_empty() => None,
        _ => Some(args),
    };
    let err = |source| SnapshotError::Qmp {
        name: name.to_owned(),
        source,
    };
    match tokio::time::timeout(CALL, qmp.execute(command, args)).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(SnapshotError::Migration {
            what: format!("{command} on '{name}'"),
            why: format!(
                "QEMU did not answer within {}",
                humantime::format_duration(CALL)
            ),
            free: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_quote_for_the_shell() {
        let p = Path::new("/tmp/a b/it's");
        assert_eq!(
            file_uri(Transport::Exec, p).unwrap(),
            r#"exec:cat > "/tmp/a b/it's""#
        );
        assert_eq!(file_uri(Transport::File, p).unwrap(), "file:/tmp/a b/it's");
    }
}
