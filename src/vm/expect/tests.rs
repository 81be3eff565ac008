//! Matching lines, captures, the text between two markers, and what a failed wait says.

use std::{fs::File, io::Write, path::Path};

use super::*;

#[test]
fn lines_split_across_chunks_still_match() {
    let e = Expect::new(r"GUEST-READY \w+")
        .unwrap()
        .fail_on("Kernel panic")
        .unwrap();
    let mut m = e.matcher();
    assert_eq!(m.feed(b"booting\r\nGUEST-RE"), None);
    assert_eq!(
        m.feed(b"ADY aarch64\r\nmore"),
        Some(Verdict::Found("GUEST-READY aarch64".into()))
    );
    let mut m = e.matcher();
    assert_eq!(
        m.feed(b"x\n[ 1.0] Kernel pan"),
        None,
        "half a failure line is not yet one"
    );
    assert_eq!(
        m.feed(b"ic - not syncing\n"),
        Some(Verdict::Failed {
            pattern: "Kernel panic".into(),
            line: "[ 1.0] Kernel panic - not syncing".into()
        })
    );
    // Bytes arriving one at a time: `\w+` must not settle for the first letter.
    let mut m = e.matcher();
    let mut found = None;
    for b in b"GUEST-READY aarch64\r\n" {
        if let Some(v) = m.feed(&[*b]) {
            found = Some(v);
            break;
        }
    }
    assert_eq!(found, Some(Verdict::Found("GUEST-READY aarch64".into())));
    // A regex prompt ending in punctuation or space matches before any newline.
    let p = Expect::new(r"\w+ login:").unwrap();
    assert!(matches!(
        p.matcher().feed(b"host login: "),
        Some(Verdict::Found(_))
    ));
    // A prompt without a newline matches as it stands.
    let t = Expect::text("login: (x)");
    assert!(matches!(
        t.matcher().feed(b"host login: (x)"),
        Some(Verdict::Found(_))
    ));
    assert!(matches!(
        Expect::new("(unclosed"),
        Err(ConsoleError::BadPattern { .. })
    ));
}

/// A finished log, read to its end, as the console of instance `vm0`.
fn log_reader(dir: &Path, text: &[u8]) -> LogReader {
    let path = dir.join("console.log");
    File::create(&path).unwrap().write_all(text).unwrap();
    LogReader::follow(File::open(&path).unwrap(), || false)
        .describing("vm0", Some(dir.join("vm0.log")))
}

#[tokio::test(flavor = "current_thread")]
async fn a_match_has_its_captures() {
    let dir = tempfile::tempdir().unwrap();
    let text = b"boot\r\nqd-uname: aarch64 (6.1)\r\nGUEST-READY aarch64\r\n";
    let m = Expect::new(r"qd-uname: (?P<arch>\w+) \((\d)\.(\d+)\)(x)?")
        .unwrap()
        .run_match(log_reader(dir.path(), text), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(m.line, "qd-uname: aarch64 (6.1)");
    assert_eq!(m.get(0), Some("qd-uname: aarch64 (6.1)"));
    assert_eq!(m.get(1), Some("aarch64"));
    assert_eq!(m.name("arch"), Some("aarch64"));
    assert_eq!((m.get(2), m.get(3)), (Some("6"), Some("1")));
    assert_eq!(m.get(4), None, "a group that took no part");
    assert_eq!(m.get(9), None);
}

#[tokio::test(flavor = "current_thread")]
async fn the_text_between_two_markers_spans_lines_and_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let text = b"noise BEG\r\nIN-\r\nBEGIN\r\none\r\ntwo\r\nEND rest END";
    let got = between(
        log_reader(dir.path(), text),
        "BEGIN",
        "END",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(got, "\none\ntwo\n");
    // The markers split across chunks: fed a byte at a time.
    let mut b = Between {
        start: "BEGIN",
        end: "END",
        buf: Vec::new(),
        started: false,
    };
    let mut out = None;
    for byte in text {
        if let Some(r) = b.step(&[*byte]) {
            out = Some(r.unwrap());
            break;
        }
    }
    assert_eq!(out.as_deref(), Some("\none\ntwo\n"));
    // "\n" as the end marker ends the line, whatever the console's line ends.
    let got = between(
        log_reader(dir.path(), b"qd-uname: aarch64\r\nnext\r\n"),
        "qd-uname: ",
        "\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(got, "aarch64");
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_wait_names_the_instance_the_log_and_shows_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = Vec::new();
    for i in 0..30 {
        text.extend(format!("line {i}\r\n").as_bytes());
    }
    text.extend(b"half");
    let e = Expect::new("GUEST-READY")
        .unwrap()
        .run(log_reader(dir.path(), &text), Duration::from_secs(5))
        .await
        .unwrap_err();
    let ConsoleError::Ended { context, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(context.instance, "vm0");
    assert_eq!(context.log, Some(dir.path().join("vm0.log")));
    assert_eq!(context.tail.len(), crate::vm::TAIL_LINES);
    assert_eq!(context.tail.last().unwrap(), "half");
    let shown = e.to_string();
    assert!(
        shown.starts_with("the console ended without 'GUEST-READY' (instance 'vm0', console log "),
        "{shown}"
    );
    assert!(shown.contains("\n    line 29\n    half"), "{shown}");
    assert!(!shown.contains("line 9\n"), "only the tail: {shown}");

    // A panic ends `between` as a failure, with the panic line.
    let e = between(
        log_reader(
            dir.path(),
            b"START\r\n[ 1.2] Kernel panic - not syncing: x\r\n",
        ),
        "START",
        "END",
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, ConsoleError::Failed { line, .. } if line.contains("not syncing: x")),
        "{e:?}"
    );

    // A wait that times out says so, with what it saw.
    let path = dir.path().join("live.log");
    File::create(&path)
        .unwrap()
        .write_all(b"still booting\n")
        .unwrap();
    let reader = LogReader::follow(File::open(&path).unwrap(), || true);
    let e = Expect::text("READY")
        .run(reader, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, ConsoleError::TimedOut { .. }), "{e:?}");
    assert!(
        e.to_string()
            .ends_with("; last 1 console lines:\n    still booting"),
        "{e}"
    );
    assert_eq!(e.context().unwrap().instance, "");
}
