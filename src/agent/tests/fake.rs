//! A fake qemu-ga on a Unix socket in a temporary folder, scripted per test, for what a real
//! agent does only by bad luck: starting late, stale replies, garbage, hanging up.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixListener,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use super::super::*;
use super::within;

/// A listening socket standing in for QEMU's chardev.
struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        Fake {
            _dir: dir,
            path,
            listener,
        }
    }

    async fn accept(&self) -> Peer {
        let (stream, _) = self.listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        Peer {
            r: BufReader::new(r),
            w,
            partial: Vec::new(),
        }
    }

    /// An agent connected and in sync, and the peer that answered.
    async fn connected(&self) -> (Agent, Peer) {
        let (agent, peer) = within(async {
            tokio::join!(Agent::connect(&self.path, Duration::from_secs(5)), async {
                let mut peer = self.accept().await;
                peer.serve(1).await;
                peer
            })
        })
        .await;
        (agent.unwrap(), peer)
    }
}

/// The agent's side of one connection.
struct Peer {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    /// A line read in part by a cancelled `request`.
    partial: Vec<u8>,
}

impl Peer {
    /// The next request, without the delimiter the client sends before a sync; `None` once the
    /// client hung up. Cancel-safe.
    async fn request(&mut self) -> Option<Value> {
        if self.r.read_until(b'\n', &mut self.partial).await.unwrap() == 0 {
            return None;
        }
        let line = std::mem::take(&mut self.partial);
        let start = line.iter().position(|&b| b != 0xFF).unwrap_or(line.len());
        Some(serde_json::from_slice(&line[start..]).unwrap())
    }

    /// Writes bytes; a client that hung up is no failure of the peer.
    async fn raw(&mut self, bytes: &[u8]) {
        let _ = self.w.write_all(bytes).await;
        let _ = self.w.flush().await;
    }

    async fn send(&mut self, msg: Value) {
        self.raw(format!("{msg}\n").as_bytes()).await;
    }

    async fn reply(&mut self, req: &Value, ret: Value) {
        self.send(json!({"return": ret, "id": req["id"]})).await;
    }

    async fn sync(&mut self, req: &Value) {
        assert_eq!(req["execute"], "guest-sync-delimited", "{req}");
        let reply = json!({"return": req["arguments"]["id"], "id": req["id"]});
        self.raw(&[&[0xFF][..], format!("{reply}\n").as_bytes()].concat())
            .await;
    }

    /// Answers `count` syncs and pings.
    async fn serve(&mut self, count: usize) {
        for _ in 0..count {
            let req = self.request().await.expect("a request");
            match req["execute"].as_str() {
                Some("guest-sync-delimited") => self.sync(&req).await,
                Some("guest-ping") => self.reply(&req, json!({})).await,
                _ => panic!("unexpected {req}"),
            }
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn connect_waits_for_an_agent_that_starts_late() {
    let fake = Fake::new();
    let started = Instant::now();
    let late = Duration::from_millis(900);
    let (agent, mut peer) = within(async {
        tokio::join!(Agent::connect(&fake.path, Duration::from_secs(10)), async {
            let mut peer = fake.accept().await;
            // Before qemu-ga runs, QEMU holds what the client sends; the agent then reads it
            // all and answers every request.
            let mut held = Vec::new();
            while started.elapsed() < late {
                let next = tokio::time::timeout(Duration::from_millis(20), peer.request());
                if let Ok(Some(req)) = next.await {
                    held.push(req);
                }
            }
            assert!(held.len() >= 2, "the client retried: {held:?}");
            let mut sync_ids: Vec<_> = held.iter().map(|r| r["arguments"]["id"].clone()).collect();
            sync_ids.dedup();
            assert_eq!(sync_ids.len(), held.len(), "each attempt has a fresh id");
            for req in &held {
                peer.sync(req).await;
            }
            peer
        })
    })
    .await;
    let agent = agent.unwrap();
    assert!(started.elapsed() >= late);
    // The replies to the other attempts are still in the stream: the ping skips them.
    let (pong, ()) = within(async {
        tokio::join!(agent.ping(), async {
            let req = peer.request().await.unwrap();
            assert_eq!(req["execute"], "guest-ping");
            peer.reply(&req, json!({})).await;
        })
    })
    .await;
    pong.unwrap();
}

#[tokio::test]
async fn connect_gives_up_at_the_deadline_and_says_what_it_waited_for() {
    let fake = Fake::new();
    let started = Instant::now();
    let (agent, requests) = within(async {
        tokio::join!(
            Agent::connect(&fake.path, Duration::from_millis(700)),
            async {
                let mut peer = fake.accept().await;
                let mut n = 0;
                while peer.request().await.is_some() {
                    n += 1;
                }
                n
            }
        )
    })
    .await;
    let err = agent.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{started:?}");
    let AgentError::NotAnswering { attempts, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        *attempts >= 2 && *attempts == requests,
        "{attempts} vs {requests}"
    );
    let text = err.to_string();
    assert!(text.contains("guest-sync-delimited within 700ms"), "{text}");
    assert!(
        err.hint()
            .unwrap()
            .contains("qemu-direct wait NAME --agent")
    );
}

#[tokio::test]
async fn a_missing_socket_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.sock");
    let started = Instant::now();
    let err = Agent::connect(&path, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::NoChannel { path: p } if *p == path),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn stale_replies_and_garbage_are_skipped() {
    let fake = Fake::new();
    let (agent, mut peer) = within(async {
        tokio::join!(Agent::connect(&fake.path, Duration::from_secs(5)), async {
            let mut peer = fake.accept().await;
            let req = peer.request().await.unwrap();
            // Left over from an earlier client, or from before a reboot.
            peer.raw(b"{\"return\": 1, \"id\": 1}\nnot json at all\n{\"retu")
                .await;
            peer.raw(b"\xFF{\"return\": 12345}\n").await;
            peer.raw(b"\xFF\xFF garbage \xFF").await;
            peer.sync(&req).await;
            peer
        })
    })
    .await;
    let agent = agent.unwrap();
    let (info, ()) = within(async {
        tokio::join!(agent.info(), async {
            let req = peer.request().await.unwrap();
            assert_eq!(req["execute"], "guest-info");
            peer.send(json!({"return": {"version": "0"}, "id": 7}))
                .await;
            peer.raw(b"\xFF{\"return\": 5, \"id\": 8}\n[1, 2]\n\n")
                .await;
            peer.send(json!({"error": {"class": "GenericError", "desc": "JSON parse error"}}))
                .await;
            let reply = json!({"return": {"version": "7.2.22", "supported_commands": [
                {"name": "guest-exec", "enabled": true, "success-response": true},
                {"name": "guest-fstrim", "enabled": false}, {"name": 3}], "new": 1},
                "id": req["id"]});
            // Split across writes, so that the client reads it in pieces.
            let line = format!("{reply}\n");
            let (a, b) = line.split_at(20);
            peer.raw(a.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            peer.raw(b.as_bytes()).await;
        })
    })
    .await;
    let info = info.unwrap();
    assert_eq!(info.version, "7.2.22");
    assert!(info.supports("guest-exec"));
    assert!(!info.supports("guest-fstrim"), "disabled");
    assert!(!info.supports("guest-shutdown"), "absent");
}

#[tokio::test]
async fn guest_errors_keep_their_class_and_description() {
    let fake = Fake::new();
    let (agent, mut peer) = fake.connected().await;
    let (reply, ()) = within(async {
        tokio::join!(agent.execute("guest-fsfreeze-freeze", None), async {
            let req = peer.request().await.unwrap();
            let error = json!({"class": "CommandNotFound", "desc": "has been disabled"});
            peer.send(json!({"error": error, "id": req["id"]})).await;
        })
    })
    .await;
    let err = reply.unwrap_err();
    assert!(
        matches!(&err, AgentError::Guest { command, class, desc }
            if command == "guest-fsfreeze-freeze" && class == "CommandNotFound"
                && desc == "has been disabled"),
        "{err:?}"
    );
    // An error reply leaves the stream in sync: the next command goes straight out.
    within(async { tokio::join!(agent.ping(), peer.serve(1)) })
        .await
        .0
        .unwrap();
}

#[tokio::test]
async fn a_command_that_gets_no_answer_times_out_and_the_next_one_resyncs() {
    let fake = Fake::new();
    let (agent, mut peer) = fake.connected().await;
    let agent = agent.reply_timeout(Duration::from_millis(300));
    let (first, unanswered) =
        within(async { tokio::join!(agent.ping(), async { peer.request().await.unwrap() }) }).await;
    let err = first.unwrap_err();
    assert!(
        matches!(&err, AgentError::Timeout { command, after }
            if command == "guest-ping" && *after == Duration::from_millis(300)),
        "{err:?}"
    );
    let (second, ()) = within(async {
        tokio::join!(agent.ping(), async {
            let req = peer.request().await.unwrap();
            assert_eq!(req["execute"], "guest-sync-delimited", "re-syncs first");
            // The late answer to the first ping arrives before the sync's.
            peer.reply(&unanswered, json!({})).await;
            peer.sync(&req).await;
            peer.serve(1).await;
        })
    })
    .await;
    second.unwrap();
}

#[tokio::test]
async fn a_hang_up_mid_command_fails_it_and_the_next_command_reconnects() {
    let fake = Fake::new();
    let (agent, mut peer) = fake.connected().await;
    let (first, ()) = within(async {
        tokio::join!(agent.ping(), async {
            peer.request().await.unwrap();
            drop(peer);
        })
    })
    .await;
    let err = first.unwrap_err();
    assert!(
        matches!(&err, AgentError::Lost { command, source: LinkError::Eof } if command == "guest-ping"),
        "{err:?}"
    );
    let (second, ()) = within(async {
        tokio::join!(agent.ping(), async {
            let mut peer = fake.accept().await;
            peer.serve(2).await;
        })
    })
    .await;
    second.unwrap();
}

#[tokio::test]
async fn an_oversized_line_drops_the_connection() {
    let fake = Fake::new();
    let (agent, mut peer) = within(async {
        tokio::join!(
            Agent::connect_limited(&fake.path, Duration::from_secs(5), 1024),
            async {
                let mut peer = fake.accept().await;
                peer.serve(1).await;
                peer
            }
        )
    })
    .await;
    let agent = agent.unwrap();
    let (first, ()) = within(async {
        tokio::join!(agent.ping(), async {
            peer.request().await.unwrap();
            peer.raw(&[b'x'; 4096]).await;
        })
    })
    .await;
    let err = first.unwrap_err();
    assert!(
        matches!(
            &err,
            AgentError::Lost {
                source: LinkError::TooLarge { limit: 1024 },
                ..
            }
        ),
        "{err:?}"
    );
    let (second, ()) = within(async {
        tokio::join!(agent.ping(), async {
            fake.accept().await.serve(2).await;
        })
    })
    .await;
    second.unwrap();
}

#[tokio::test]
async fn concurrent_commands_go_out_one_at_a_time() {
    let fake = Fake::new();
    let (agent, mut peer) = fake.connected().await;
    let agent = Arc::new(agent);
    let pings = (0..3).map(|_| {
        let agent = agent.clone();
        tokio::spawn(async move { agent.ping().await })
    });
    let pings: Vec<_> = pings.collect();
    within(async {
        for _ in 0..3 {
            let req = peer.request().await.unwrap();
            let more = tokio::time::timeout(Duration::from_millis(50), peer.r.fill_buf()).await;
            assert!(
                more.is_err(),
                "a second request came before this one's reply"
            );
            peer.reply(&req, json!({})).await;
        }
        for ping in pings {
            ping.await.unwrap().unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn exec_polls_until_the_exit_and_keeps_stdout_and_stderr_apart() {
    let fake = Fake::new();
    let (agent, mut peer) = fake.connected().await;
    let request = ExecRequest {
        env: vec!["A=1".into()],
        stdin: Some(b"in".to_vec()),
        ..ExecRequest::new("/bin/prog", ["a b"])
    };
    let (out, ()) = within(async {
        tokio::join!(agent.exec(request), async {
            let req = peer.request().await.unwrap();
            assert_eq!(req["execute"], "guest-exec");
            let expected = json!({"path": "/bin/prog", "arg": ["a b"], "env": ["A=1"],
                "input-data": b64(b"in"), "capture-output": true});
            assert_eq!(req["arguments"], expected);
            peer.reply(&req, json!({"pid": 42})).await;
            for exited in [false, false, true] {
                let req = peer.request().await.unwrap();
                assert_eq!(req["arguments"], json!({"pid": 42}));
                let status = if exited {
                    json!({"exited": true, "exitcode": 3, "out-data": b64(b"out\0\xFF"),
                        "err-data": b64(b"err"), "out-truncated": true, "from-the-future": 1})
                } else {
                    json!({"exited": false})
                };
                peer.reply(&req, status).await;
            }
        })
    })
    .await;
    let out = out.unwrap();
    assert_eq!(out.status, ExitStatus::Code(3));
    assert_eq!(out.stdout, b"out\0\xFF");
    assert_eq!(out.stderr, b"err");
    assert!(out.stdout_truncated && !out.stderr_truncated);
}

#[tokio::test]
async fn exec_of_a_missing_program_is_a_start_failure() {
    let fake = Fake::new();
    let (agent, mut peer) = fake.connected().await;
    let (out, ()) = within(async {
        tokio::join!(agent.exec(ExecRequest::new("nope", [""; 0])), async {
            let req = peer.request().await.unwrap();
            let desc = "Guest agent command failed, error was 'Failed to execute child process \
                        “nope” (No such file or directory)'";
            let error = json!({"class": "GenericError", "desc": desc});
            peer.send(json!({"error": error, "id": req["id"]})).await;
        })
    })
    .await;
    let err = out.unwrap_err();
    assert!(
        matches!(&err, AgentError::ExecStart { path, desc } if path == "nope" && desc.contains("No such file")),
        "{err:?}"
    );
    assert!(err.hint().is_some());
}

/// Plays an agent whose process 42 never exits until killed, by `guest-exec-terminate` if
/// `terminate`, else by the kill script run as process 43.
async fn never_exits(peer: &mut Peer, terminate: bool) {
    let mut killed = false;
    while let Some(req) = peer.request().await {
        let args = &req["arguments"];
        let ret = match req["execute"].as_str().unwrap() {
            "guest-exec" if args["path"] == "/bin/sh" => {
                assert!(!terminate);
                assert_eq!(args["arg"][3], "42");
                killed = true;
                json!({"pid": 43})
            }
            "guest-exec" => json!({"pid": 42}),
            "guest-exec-status" if args["pid"] == 43 => json!({"exited": true, "exitcode": 0}),
            "guest-exec-status" if killed => {
                peer.reply(&req, json!({"exited": true, "signal": 9})).await;
                return;
            }
            "guest-exec-status" => json!({"exited": false}),
            "guest-info" => {
                let mut commands = vec![json!({"name": "guest-exec", "enabled": true})];
                if terminate {
                    commands.push(json!({"name": "guest-exec-terminate", "enabled": true}));
                }
                json!({"version": "99", "supported_commands": commands})
            }
            "guest-exec-terminate" => {
                assert!(terminate && args["pid"] == 42);
                killed = true;
                json!({})
            }
            other => panic!("unexpected {other}"),
        };
        peer.reply(&req, ret).await;
    }
}

#[tokio::test]
async fn exec_past_its_timeout_kills_the_process() {
    for terminate in [false, true] {
        let fake = Fake::new();
        let (agent, mut peer) = fake.connected().await;
        let request = ExecRequest {
            timeout: Some(Duration::from_millis(150)),
            ..ExecRequest::new("sleep", ["1000"])
        };
        let started = Instant::now();
        let (out, ()) =
            within(async { tokio::join!(agent.exec(request), never_exits(&mut peer, terminate)) })
                .await;
        let err = out.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(
            matches!(&err, AgentError::ExecTimeout { path, after, killed: true }
                if path == "sleep" && *after == Duration::from_millis(150)),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "sleep did not exit within 150ms in the guest; it was killed"
        );
    }
}

#[test]
fn exit_status_reads_like_a_shell() {
    assert!(ExitStatus::Code(0).success());
    assert!(!ExitStatus::Code(7).success());
    assert_eq!(ExitStatus::Code(7).shell_code(), 7);
    assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    assert_eq!(ExitStatus::Signal(9).signal(), Some(9));
    assert_eq!(ExitStatus::Signal(9).code(), None);
    assert_eq!(ExitStatus::Signal(15).to_string(), "killed by signal 15");
    assert_eq!(ExitStatus::Code(2).to_string(), "exit code 2");
}
