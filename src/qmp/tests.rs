//! A scripted fake peer over `tokio::io::duplex` for the protocol's edge cases, then real QEMU.

use std::{error::Error as _, future::Future, path::PathBuf, process::Stdio, time::Duration};

use serde_json::json;
use tokio::io::{
    AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf, duplex, split,
};

use super::*;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;

/// Every test step is bounded: a hang is a failure, not a stuck test run.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

/// The QEMU side of a fake connection.
struct Peer {
    lines: tokio::io::Lines<BufReader<ReadHalf<DuplexStream>>>,
    w: WriteHalf<DuplexStream>,
}

impl Peer {
    async fn raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
        self.w.flush().await.unwrap();
    }

    async fn send(&mut self, msg: &str) {
        self.raw(format!("{msg}\r\n").as_bytes()).await;
    }

    /// The next request, or `None` once the client closed its end.
    async fn request(&mut self) -> Option<Value> {
        let line = self.lines.next_line().await.unwrap()?;
        Some(serde_json::from_str(&line).unwrap())
    }

    async fn reply(&mut self, req: &Value, ret: Value) {
        self.send(&json!({"return": ret, "id": req["id"]}).to_string())
            .await;
    }

    async fn event(&mut self, name: &str, data: Option<Value>) {
        let mut e =
            json!({"timestamp": {"seconds": 1795293043, "microseconds": 336691}, "event": name});
        if let Some(d) = data {
            e["data"] = d;
        }
        self.send(&e.to_string()).await;
    }
}

fn pipe() -> ((ReadHalf<DuplexStream>, WriteHalf<DuplexStream>), Peer) {
    let (client, server) = duplex(64 * 1024);
    let (sr, sw) = split(server);
    let peer = Peer {
        lines: BufReader::new(sr).lines(),
        w: sw,
    };
    (split(client), peer)
}

async fn connect_limited(limit: usize) -> (Qmp, Peer) {
    let ((r, w), mut peer) = pipe();
    let client = tokio::spawn(Qmp::handshake_limited(r, w, limit));
    within(async {
        peer.send(GREETING).await;
        let req = peer.request().await.unwrap();
        assert_eq!(req["execute"], "qmp_capabilities");
        peer.reply(&req, json!({})).await;
        (client.await.unwrap().unwrap(), peer)
    })
    .await
}

async fn connect() -> (Qmp, Peer) {
    connect_limited(MAX_MESSAGE).await
}

#[tokio::test]
async fn handshake_keeps_the_greeting() {
    let (qmp, _peer) = connect().await;
    let g = qmp.greeting();
    assert_eq!(g.version, Version::new(7, 2, 22));
    assert!(g.version >= Version::new(7, 0, 0) && g.version < Version::new(8, 0, 0));
    assert_eq!(g.package, "Debian 1:7.2+dfsg-7+deb12u18+b3");
    assert_eq!(g.capabilities, ["oob"]);
}

#[tokio::test]
async fn handshake_rejects_a_non_qmp_peer_and_an_early_close() {
    let ((r, w), mut peer) = pipe();
    let client = tokio::spawn(Qmp::handshake(r, w));
    peer.send("\r\nqemu-system-x86_64: -foo: invalid option")
        .await;
    let err = within(client).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, QmpError::Greeting { line } if line.contains("invalid option")),
        "{err:?}"
    );

    let ((r, w), peer) = pipe();
    drop(peer);
    let err = within(Qmp::handshake(r, w)).await.unwrap_err();
    assert!(matches!(err, QmpError::Closed(CloseReason::Eof)), "{err:?}");
}

#[tokio::test]
async fn replies_are_matched_by_id_when_out_of_order() {
    let (qmp, mut peer) = connect().await;
    let (a, b, ()) = within(async {
        tokio::join!(
            qmp.execute("query-status", None),
            qmp.execute("query-kvm", Some(json!({"x": 1}))),
            async {
                let first = peer.request().await.unwrap();
                let second = peer.request().await.unwrap();
                assert_ne!(first["id"], second["id"]);
                for req in [&second, &first] {
                    let ret = json!({"was": req["execute"], "args": req["arguments"]});
                    peer.reply(req, ret).await;
                }
            }
        )
    })
    .await;
    assert_eq!(a.unwrap(), json!({"was": "query-status", "args": null}));
    assert_eq!(b.unwrap(), json!({"was": "query-kvm", "args": {"x": 1}}));
}

#[tokio::test]
async fn events_interleave_with_replies_and_unknown_ones_pass_through() {
    let (qmp, mut peer) = connect().await;
    let mut events = qmp.events();
    let (status, ()) = within(async {
        tokio::join!(qmp.query_status(), async {
            let req = peer.request().await.unwrap();
            peer.event(
                "X_EVENT_FROM_QEMU_99",
                Some(json!({"new-enum": "sideways"})),
            )
            .await;
            peer.send(r#"{"event": "STOP"}"#).await;
            // A run state this client has never heard of, and no `singlestep` (QEMU >= 8.1).
            peer.reply(&req, json!({"running": false, "status": "future-state"}))
                .await;
            peer.event("RESUME", None).await;
        })
    })
    .await;
    assert_eq!(
        status.unwrap(),
        Status {
            running: false,
            status: "future-state".into(),
            singlestep: None
        }
    );
    let first = within(events.next_event()).await.unwrap();
    assert_eq!(first.name, "X_EVENT_FROM_QEMU_99");
    assert_eq!(first.data["new-enum"], "sideways");
    assert_eq!(first.timestamp, Some((1795293043, 336691)));
    let stop = within(events.next_event()).await.unwrap();
    assert_eq!(
        (stop.name.as_str(), &stop.data, stop.timestamp),
        ("STOP", &Value::Null, None)
    );
    assert_eq!(within(events.next_event()).await.unwrap().name, "RESUME");
}

#[tokio::test]
async fn garbage_is_reported_and_partial_lines_are_joined() {
    let (qmp, mut peer) = connect().await;
    let mut events = qmp.events();
    let (reply, ()) = within(async {
        tokio::join!(qmp.execute("query-kvm", None), async {
            let req = peer.request().await.unwrap();
            peer.send("this is not json").await;
            peer.send("[1, 2]").await;
            peer.send(r#"{"return": {}, "id": 4096}"#).await;
            peer.send(r#"{"return": {}}"#).await;
            let reply =
                json!({"return": {"enabled": true, "present": true}, "id": req["id"]}).to_string();
            let (a, b) = reply.split_at(10);
            peer.raw(a.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            peer.raw(b.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            peer.raw(b"\r\n").await;
        })
    })
    .await;
    assert_eq!(reply.unwrap(), json!({"enabled": true, "present": true}));
    let mut problems = Vec::new();
    for _ in 0..4 {
        match within(events.next()).await.unwrap() {
            Notice::Garbage { line, problem } => problems.push((line, problem)),
            other => panic!("expected garbage, got {other:?}"),
        }
    }
    assert_eq!(problems[0].0, "this is not json");
    assert!(problems[0].1.contains("expected"), "{}", problems[0].1);
    assert_eq!(problems[1].1, "not a JSON object");
    assert!(problems[2].0.contains("4096"));
    assert!(problems[3].1.contains("pending request"));
    // The connection is still usable.
    let (kvm, ()) = within(async {
        tokio::join!(qmp.query_kvm(), async {
            let req = peer.request().await.unwrap();
            peer.reply(&req, json!({"enabled": false, "present": true}))
                .await;
        })
    })
    .await;
    assert_eq!(
        kvm.unwrap(),
        Kvm {
            enabled: false,
            present: true
        }
    );
}

#[tokio::test]
async fn peer_closing_mid_request_fails_it_and_later_ones() {
    let (qmp, mut peer) = connect().await;
    let mut events = qmp.events();
    let (res, ()) = within(async {
        tokio::join!(qmp.stop(), async {
            peer.request().await.unwrap();
            // A half-written reply, then gone.
            peer.raw(br#"{"return": {"#).await;
            drop(peer);
        })
    })
    .await;
    let err = res.unwrap_err();
    assert!(matches!(err, QmpError::Closed(CloseReason::Eof)), "{err:?}");
    assert_eq!(err.to_string(), "QMP connection closed");
    let later = within(qmp.query_status()).await.unwrap_err();
    assert!(
        matches!(later, QmpError::Closed(CloseReason::Eof)),
        "{later:?}"
    );
    assert!(matches!(within(qmp.closed()).await, CloseReason::Eof));
    // The half line is reported, then the stream ends.
    assert!(matches!(
        within(events.next()).await,
        Some(Notice::Garbage { .. })
    ));
    assert_eq!(within(events.next()).await, None);
    assert_eq!(within(qmp.events().next()).await, None);
}

#[tokio::test]
async fn an_oversized_message_closes_the_connection() {
    let (qmp, mut peer) = connect().await;
    let mut events = qmp.events();
    let (res, ()) = within(async {
        tokio::join!(qmp.execute("query-qmp-schema", None), async {
            peer.request().await.unwrap();
            let huge = format!(r#"{{"return": "{}"#, "x".repeat(MAX_MESSAGE + 1));
            // The client stops reading part-way, so this write may fail.
            let _ = peer.w.write_all(huge.as_bytes()).await;
            // The client dropped its end: the peer sees the connection closed.
            assert!(peer.request().await.is_none());
        })
    })
    .await;
    let err = res.unwrap_err();
    assert!(
        matches!(
            err,
            QmpError::Closed(CloseReason::TooLarge { limit: MAX_MESSAGE })
        ),
        "{err:?}"
    );
    assert_eq!(within(events.next()).await, None);
}

#[tokio::test]
async fn the_size_limit_counts_each_line_not_the_stream() {
    let (qmp, mut peer) = connect_limited(200).await;
    let (res, ()) = within(async {
        tokio::join!(qmp.execute("x", None), async {
            let req = peer.request().await.unwrap();
            for _ in 0..50 {
                peer.event("E", Some(json!({"n": 1}))).await;
            }
            peer.reply(&req, json!(1)).await;
        })
    })
    .await;
    assert_eq!(res.unwrap(), json!(1));
    let (res, ()) = within(async {
        tokio::join!(qmp.execute("x", None), async {
            peer.request().await.unwrap();
            peer.send(&format!(r#"{{"return": "{}"}}"#, "y".repeat(200)))
                .await;
        })
    })
    .await;
    let err = res.unwrap_err();
    assert_eq!(
        err.source().map(|s| s.to_string()).as_deref(),
        Some("a message exceeded 200 bytes")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_from_two_tasks() {
    let (qmp, mut peer) = connect().await;
    let tasks: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|who| {
            let qmp = qmp.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    let name = format!("{who}-{i}");
                    let ret = qmp.execute(&name, None).await.unwrap();
                    assert_eq!(ret, json!(name));
                }
            })
        })
        .collect();
    within(async {
        // Each task has one request in flight: answer both, newest first, so that replies
        // overtake requests.
        for _ in 0..100 {
            let first = peer.request().await.unwrap();
            let second = peer.request().await.unwrap();
            for req in [second, first] {
                peer.reply(&req, req["execute"].clone()).await;
            }
        }
    })
    .await;
    for t in tasks {
        within(t).await.unwrap();
    }
    drop(peer);
}

#[tokio::test]
async fn a_qemu_error_reply_names_the_command() {
    let (qmp, mut peer) = connect().await;
    let (res, ()) = within(async {
        tokio::join!(qmp.execute("nonexist", None), async {
            let req = peer.request().await.unwrap();
            let e = json!({"id": req["id"], "error": {"class": "CommandNotFound", "desc": "The command nonexist has not been found"}});
            peer.send(&e.to_string()).await;
        })
    })
    .await;
    let err = res.unwrap_err();
    assert_eq!(
        err.to_string(),
        "nonexist: The command nonexist has not been found"
    );
    let QmpError::Command {
        command,
        class,
        desc,
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (command.as_str(), class.as_str()),
        ("nonexist", "CommandNotFound")
    );
    assert!(desc.starts_with("The command"));
}

#[tokio::test]
async fn typed_calls_decode_leniently_or_say_which_command_failed() {
    let (qmp, mut peer) = connect().await;
    let (cpus, bad, odd, ()) = within(async {
        tokio::join!(qmp.query_cpus_fast(), qmp.query_status(), qmp.cont(), async {
            let req = peer.request().await.unwrap();
            assert_eq!(req["execute"], "query-cpus-fast");
            assert!(req.get("arguments").is_none());
            // As s390x sends it, with its extra `cpu-state`.
            let cpus = json!([{"thread-id": 12654, "props": {"core-id": 0}, "cpu-state": "operating",
                "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "s390x"}]);
            peer.reply(&req, cpus).await;
            let req = peer.request().await.unwrap();
            peer.reply(&req, json!({"running": "yes"})).await;
            let req = peer.request().await.unwrap();
            peer.send(&json!({"id": req["id"]}).to_string()).await;
        })
    })
    .await;
    let cpus = cpus.unwrap();
    assert_eq!(cpus.len(), 1);
    assert_eq!(
        (cpus[0].target.as_str(), cpus[0].thread_id),
        ("s390x", 12654)
    );
    assert_eq!(cpus[0].props["core-id"], 0);
    assert_eq!(cpus[0].other["cpu-state"], "operating");
    let bad = bad.unwrap_err();
    assert_eq!(bad.to_string(), "cannot decode the reply to query-status");
    assert!(bad.source().unwrap().to_string().contains("invalid type"));
    assert!(matches!(odd.unwrap_err(), QmpError::Malformed { command, .. } if command == "cont"));
}

#[tokio::test]
async fn a_caller_that_gives_up_leaves_nothing_behind() {
    let (qmp, mut peer) = connect().await;
    let mut events = qmp.events();
    let gave_up = tokio::time::timeout(Duration::from_millis(50), qmp.execute("slow", None)).await;
    assert!(gave_up.is_err());
    assert!(qmp.inner.shared.lock().pending.is_empty());
    let (res, ()) = within(async {
        tokio::join!(qmp.execute("fast", None), async {
            let slow = peer.request().await.unwrap();
            let fast = peer.request().await.unwrap();
            peer.reply(&slow, json!("late")).await;
            peer.event("AFTER", None).await;
            peer.reply(&fast, json!("fast")).await;
        })
    })
    .await;
    assert_eq!(res.unwrap(), json!("fast"));
    // The late reply is neither delivered nor reported as garbage.
    let next = within(events.next()).await.unwrap();
    assert!(
        matches!(next, Notice::Event(Event { ref name, .. }) if name == "AFTER"),
        "{next:?}"
    );
}

#[tokio::test]
async fn a_lagging_subscriber_is_told_and_carries_on() {
    let (qmp, mut peer) = connect().await;
    let mut events = qmp.events();
    let (res, ()) = within(async {
        tokio::join!(qmp.execute("x", None), async {
            let req = peer.request().await.unwrap();
            for i in 0..EVENT_BUFFER + 10 {
                peer.event("TICK", Some(json!({"i": i}))).await;
            }
            peer.reply(&req, json!({})).await;
        })
    })
    .await;
    res.unwrap();
    assert_eq!(within(events.next()).await, Some(Notice::Lagged(10)));
    let next = within(events.next_event()).await.unwrap();
    assert_eq!(next.data["i"], 10);
}

#[tokio::test]
async fn dropping_the_client_closes_the_transport_and_ends_events() {
    let (qmp, mut peer) = connect().await;
    let mut events = qmp.events();
    let other = qmp.clone();
    drop(qmp);
    peer.event("STILL_OPEN", None).await;
    assert_eq!(
        within(events.next_event()).await.unwrap().name,
        "STILL_OPEN"
    );
    drop(other);
    assert_eq!(within(events.next()).await, None);
    assert!(within(peer.request()).await.is_none());
}

/// A client kept beyond the runtime that made it (a test fixture in a static, say) fails at
/// once from another runtime, saying why, instead of waiting forever for a reply that no task
/// is left to read.
#[test]
fn a_client_whose_runtime_is_gone_fails_at_once() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (qmp, peer) = first.block_on(connect());
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = second
        .block_on(within(qmp.query_status()))
        .expect_err("no reader is left");
    assert!(
        matches!(e, QmpError::Closed(CloseReason::RuntimeGone)),
        "{e:?}"
    );
    let chain = chain(&e);
    assert!(chain.contains("runtime"), "{chain}");
    drop(peer);
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

// Real QEMU.

fn qemu() -> Option<PathBuf> {
    let found = which::which("qemu-system-x86_64").ok();
    if found.is_none() {
        println!("skipping: qemu-system-x86_64 not found");
    }
    found
}

fn spawn(binary: &Path, args: &[&str], stdio: bool) -> tokio::process::Child {
    let pipe = || if stdio { Stdio::piped() } else { Stdio::null() };
    tokio::process::Command::new(binary)
        .args(["-nodefaults", "-display", "none"])
        .args(args)
        .stdin(pipe())
        .stdout(pipe())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The capability probe's way in: `-qmp stdio`, the greeting on the child's stdout.
#[tokio::test]
async fn real_qemu_over_stdio() {
    let Some(binary) = qemu() else { return };
    let mut child = spawn(&binary, &["-machine", "none", "-qmp", "stdio"], true);
    let (stdout, stdin) = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let qmp = within(Qmp::handshake(stdout, stdin)).await.unwrap();
    assert!(qmp.greeting().version >= Version::new(2, 0, 0));
    let status = within(qmp.query_status()).await.unwrap();
    assert_eq!((status.running, status.status.as_str()), (true, "running"));
    let kvm = within(qmp.query_kvm()).await.unwrap();
    assert!(!kvm.enabled || kvm.present);
    let defs = within(qmp.execute("query-cpu-definitions", None))
        .await
        .unwrap();
    assert!(!defs.as_array().unwrap().is_empty());
    let err = within(qmp.execute("no-such-command", None))
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"));
    within(qmp.quit()).await.unwrap();
    assert!(within(child.wait()).await.unwrap().success());
    assert!(matches!(within(qmp.closed()).await, CloseReason::Eof));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_qemu_over_a_unix_socket() {
    let Some(binary) = qemu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let mut child = spawn(
        &binary,
        &["-machine", "none", "-S", "-qmp", &qmp_arg],
        false,
    );
    let qmp = within(async {
        loop {
            match Qmp::connect_unix(&sock).await {
                Ok(qmp) => break qmp,
                Err(QmpError::Connect { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    let mut events = qmp.events();
    let status = within(qmp.query_status()).await.unwrap();
    assert_eq!(
        (status.running, status.status.as_str()),
        (false, "prelaunch")
    );
    within(qmp.cont()).await.unwrap();
    assert_eq!(within(events.next_event()).await.unwrap().name, "RESUME");
    within(qmp.stop()).await.unwrap();
    let stop = within(events.next_event()).await.unwrap();
    assert_eq!(stop.name, "STOP");
    assert!(stop.timestamp.is_some_and(|(s, _)| s > 0));
    assert_eq!(within(qmp.query_status()).await.unwrap().status, "paused");
    within(qmp.quit()).await.unwrap();
    let shutdown = within(events.next_event()).await.unwrap();
    assert_eq!(
        (shutdown.name.as_str(), &shutdown.data["reason"]),
        ("SHUTDOWN", &json!("host-qmp-quit"))
    );
    assert!(within(child.wait()).await.unwrap().success());
}

#[tokio::test]
async fn real_qemu_lists_its_vcpus() {
    let Some(binary) = qemu() else { return };
    let args = [
        "-machine", "pc", "-accel", "tcg", "-smp", "2", "-S", "-qmp", "stdio",
    ];
    let mut child = spawn(&binary, &args, true);
    let (stdout, stdin) = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let qmp = within(Qmp::handshake(stdout, stdin)).await.unwrap();
    let cpus = within(qmp.query_cpus_fast()).await.unwrap();
    assert_eq!(cpus.len(), 2);
    assert_eq!(cpus[1].cpu_index, 1);
    assert_eq!(cpus[1].target, "x86_64");
    assert!(cpus[1].thread_id > 0 && cpus[1].qom_path.starts_with("/machine/"));
    assert_eq!(cpus[1].props["core-id"], 1);
    within(qmp.quit()).await.unwrap();
    assert!(within(child.wait()).await.unwrap().success());
}
