//! QMP events, seen by the supervisor: recorded to `events.jsonl` (QMP keeps no history, and
//! other clients connect later), and turned into the run state and failures.

use std::{fs::File, io::Write, sync::Arc, time::Duration};

use serde_json::{Map, Value, json};

use super::{Failure, Shared};
use crate::qmp::{Event, Events, Notice, Qmp};

/// Events after which the run state is asked for again.
const STATE_EVENTS: &[&str] = &[
    "STOP",
    "RESUME",
    "RESET",
    "GUEST_PANICKED",
    "SUSPEND",
    "WAKEUP",
];
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// An event as one JSON line, in QMP's own shape.
pub(crate) fn to_line(e: &Event) -> String {
    let mut m = Map::new();
    m.insert("event".into(), e.name.clone().into());
    if !e.data.is_null() {
        m.insert("data".into(), e.data.clone());
    }
    if let Some((seconds, microseconds)) = e.timestamp {
        m.insert(
            "timestamp".into(),
            json!({"seconds": seconds, "microseconds": microseconds}),
        );
    }
    Value::Object(m).to_string()
}

/// What a run state says about the guest, if it is a failure.
pub(crate) fn failure_of_state(state: &str) -> Option<Failure> {
    match state {
        "internal-error" => Some(Failure::Crashed("run state internal-error".into())),
        "guest-panicked" => Some(Failure::Panicked("run state guest-panicked".into())),
        _ => None,
    }
}

/// Records every event until the connection ends, and keeps the run state current.
pub(crate) async fn record(mut events: Events, qmp: Qmp, mut file: File, shared: Arc<Shared>) {
    while let Some(notice) = events.next().await {
        let Notice::Event(e) = notice else { continue };
        // Best effort: a full disk must not stop the supervisor from watching the guest.
        let _ = writeln!(file, "{}", to_line(&e));
        match e.name.as_str() {
            "SHUTDOWN" => {
                if let Some(reason) = e.data.get("reason").and_then(Value::as_str) {
                    *super::console::lock(&shared.shutdown_reason) = Some(reason.to_owned());
                }
                shared.set_state("shutdown");
            }
            "GUEST_PANICKED" => {
                let action = e.data.get("action").and_then(Value::as_str).unwrap_or("?");
                shared.fail(Failure::Panicked(format!(
                    "GUEST_PANICKED (action {action})"
                )));
            }
            _ => {}
        }
        if STATE_EVENTS.contains(&e.name.as_str())
            && let Ok(Ok(status)) = tokio::time::timeout(QUERY_TIMEOUT, qmp.query_status()).await
        {
            shared.set_state(&status.status);
            if let Some(f) = failure_of_state(&status.status) {
                shared.fail(f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        instance::{Instance, InstanceInfo},
        profile::Accel,
    };
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    fn shared(root: &std::path::Path) -> Arc<Shared> {
        let inst = Instance::create(root, "vm", false).unwrap();
        Arc::new(Shared::new(
            0,
            None,
            inst,
            InstanceInfo {
                name: "vm".into(),
                arch: "x86_64".into(),
                accel: Accel::Kvm,
                pid: 0,
                supervisor_pid: 0,
                started: 0,
                state: "prelaunch".into(),
                console_log: None,
                ssh_port: None,
            },
        ))
    }

    /// What QEMU does when KVM gives up: STOP, after which `query-status` says
    /// `internal-error` and QEMU stays up. (The fake sends STOP right after `cont`.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_stop_into_internal_error_is_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (cr, cw) = tokio::io::split(client);
        let (sr, mut sw) = tokio::io::split(server);
        let fake = tokio::spawn(async move {
            let mut lines = BufReader::new(sr).lines();
            sw.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            while let Some(line) = lines.next_line().await.unwrap() {
                let req: Value = serde_json::from_str(&line).unwrap();
                let ret = match req["execute"].as_str() {
                    Some("query-status") => json!({"status": "internal-error", "running": false}),
                    _ => json!({}),
                };
                let reply = json!({"return": ret, "id": req["id"]}).to_string() + "\n";
                sw.write_all(reply.as_bytes()).await.unwrap();
                if req["execute"] == "cont" {
                    sw.write_all(b"{\"event\": \"STOP\"}\n").await.unwrap();
                }
            }
        });
        let qmp = Qmp::handshake(cr, cw).await.unwrap();
        let events_file = File::create(dir.path().join("events")).unwrap();
        let recorder = tokio::spawn(record(
            qmp.events(),
            qmp.clone(),
            events_file,
            shared.clone(),
        ));
        qmp.cont().await.unwrap();
        let mut failure = shared.failure.subscribe();
        let f = tokio::time::timeout(Duration::from_secs(10), failure.wait_for(Option::is_some))
            .await
            .unwrap()
            .unwrap()
            .clone();
        assert_eq!(f, Some(Failure::Crashed("run state internal-error".into())));
        assert_eq!(*shared.state.borrow(), "internal-error");
        let info = crate::instance::find(dir.path(), "vm")
            .unwrap()
            .info()
            .unwrap()
            .unwrap();
        assert_eq!(info.state, "internal-error", "ps sees it too");
        drop(qmp);
        recorder.abort();
        fake.abort();
    }

    #[test]
    fn events_are_written_in_qmp_shape() {
        let e = Event {
            name: "STOP".into(),
            data: Value::Null,
            timestamp: Some((1, 2)),
        };
        assert_eq!(
            to_line(&e),
            r#"{"event":"STOP","timestamp":{"microseconds":2,"seconds":1}}"#
        );
        assert!(failure_of_state("internal-error").is_some());
        assert!(failure_of_state("paused").is_none());
    }
}
