//! Waiting for text on a console: [`Expect`] (a pattern, and failure patterns that end the wait
//! early), [`Matcher`] (one pass over a byte stream), and what a wait ends with: the line and
//! its captures ([`ConsoleMatch`]), the text between two markers, or a [`ConsoleError`] that
//! carries what a failed test needs to say why: the console's last lines, its log, the instance.

use std::{collections::BTreeMap, fmt, io, path::PathBuf, time::Duration};

use regex::Regex;

use super::{
    PANIC_MARKER,
    console::{LogReader, MAX_LINE, Watcher},
};

/// The most text [`super::Console::between`] keeps while it waits for the end marker, so that
/// a guest that never prints it cannot grow memory without bound.
pub const MAX_BETWEEN: usize = 16 << 20;

/// Where a console comes from, for messages: which instance, and its durable log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The instance's name; empty if unknown.
    pub instance: String,
    /// The console log that outlives the instance, if one is written.
    pub log: Option<PathBuf>,
}

/// What a failed wait had seen: the instance, its console log and the console's last lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleContext {
    /// The instance's name; empty if unknown.
    pub instance: String,
    /// The durable console log, if one is written.
    pub log: Option<PathBuf>,
    /// The last lines read (at most [`super::TAIL_LINES`]), the unfinished one included.
    pub tail: Vec<String>,
}

/// ` (instance 'a64', console log /x/a64.log); last 2 console lines:` and the lines, indented.
impl fmt::Display for ConsoleContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut about = Vec::new();
        if !self.instance.is_empty() {
            about.push(format!("instance '{}'", self.instance));
        }
        if let Some(log) = &self.log {
            about.push(format!("console log {}", log.display()));
        }
        if !about.is_empty() {
            write!(f, " ({})", about.join(", "))?;
        }
        if self.tail.is_empty() {
            return write!(f, "; the console printed nothing");
        }
        write!(f, "; last {} console lines:", self.tail.len())?;
        for line in &self.tail {
            write!(f, "\n    {line}")?;
        }
        Ok(())
    }
}

/// Why waiting for console text failed. The variants of a wait that ran carry a
/// [`ConsoleContext`], shown in the message.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The pattern is not a valid regular expression.
    #[error("invalid pattern '{pattern}'")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: Box<regex::Error>,
    },
    /// A failure pattern matched first.
    #[error("console matched failure pattern '{pattern}': {line}{context}")]
    Failed {
        /// The failure pattern.
        pattern: String,
        /// The line that matched.
        line: String,
        /// What had been seen.
        context: Box<ConsoleContext>,
    },
    /// The time ran out.
    #[error(
        "'{pattern}' did not appear on the console within {}{context}",
        humantime::format_duration(*after)
    )]
    TimedOut {
        /// The pattern (or text) waited for.
        pattern: String,
        /// The timeout.
        after: Duration,
        /// What had been seen.
        context: Box<ConsoleContext>,
    },
    /// The console ended (QEMU exited) without the pattern.
    #[error("the console ended without '{pattern}'{context}")]
    Ended {
        /// The pattern (or text) waited for.
        pattern: String,
        /// What had been seen.
        context: Box<ConsoleContext>,
    },
    /// More than [`MAX_BETWEEN`] bytes came after the start marker without the end marker.
    #[error("no '{end}' within {limit} bytes after '{start}'{context}")]
    TooLong {
        /// The start marker.
        start: String,
        /// The end marker.
        end: String,
        /// The limit.
        limit: usize,
        /// What had been seen.
        context: Box<ConsoleContext>,
    },
    /// Reading the log failed.
    #[error("cannot read the console log")]
    Io(#[from] io::Error),
}

impl ConsoleError {
    /// What the wait had seen, for the variants of a wait that ran.
    pub fn context(&self) -> Option<&ConsoleContext> {
        match self {
            ConsoleError::Failed { context, .. }
            | ConsoleError::TimedOut { context, .. }
            | ConsoleError::Ended { context, .. }
            | ConsoleError::TooLong { context, .. } => Some(context),
            ConsoleError::BadPattern { .. } | ConsoleError::Io(_) => None,
        }
    }
}

/// A line that matched, with the pattern's capture groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleMatch {
    /// The whole line, trimmed.
    pub line: String,
    /// Group 0 (the match itself), then each group in order; `None` for a group that took
    /// no part in the match. For literal text, only the match.
    pub groups: Vec<Option<String>>,
    /// The named groups that took part in the match.
    pub named: BTreeMap<String, String>,
}

impl ConsoleMatch {
    /// Group `i` (0 is the whole match), if it took part.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.groups.get(i)?.as_deref()
    }

    /// The named group `name`, if it took part.
    pub fn name(&self, name: &str) -> Option<&str> {
        self.named.get(name).map(String::as_str)
    }
}

/// A pattern to wait for, with failure patterns that end the wait early.
#[derive(Debug, Clone)]
pub struct Expect {
    want: Want,
    fail: Vec<Regex>,
}

/// What [`Expect`] waits for.
#[derive(Debug, Clone)]
enum Want {
    Pattern(Regex),
    /// Literal text, searched as is: no regex to compile, so no size limit to hit.
    Text(String),
}

impl Want {
    fn is_match(&self, line: &str) -> bool {
        match self {
            Want::Pattern(r) => r.is_match(line),
            Want::Text(t) => line.contains(t.as_str()),
        }
    }

    /// On a line still being written: a regex match that ends at the last byte received, on a
    /// word character, may only be a prefix of what the pattern would take (`READY \w+` on
    /// `READY a` while `arch64` is still in flight), so it waits for more. A match that ends
    /// earlier, or on a space or punctuation (a prompt such as `login: `), counts at once.
    fn is_settled_match(&self, partial: &str) -> bool {
        match self {
            Want::Text(t) => partial.contains(t.as_str()),
            Want::Pattern(r) => r.find_iter(partial).any(|m| {
                m.end() < partial.len()
                    || !m
                        .as_str()
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
            }),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Want::Pattern(r) => r.as_str(),
            Want::Text(t) => t,
        }
    }

    /// The line with its captures; the line is one this matched.
    fn captures(&self, line: String) -> ConsoleMatch {
        let (groups, named) = match self {
            Want::Text(t) => (vec![Some(t.clone())], BTreeMap::new()),
            Want::Pattern(r) => match r.captures(&line) {
                Some(c) => {
                    let groups = c.iter().map(|g| g.map(|m| m.as_str().to_owned())).collect();
                    let named = r
                        .capture_names()
                        .flatten()
                        .filter_map(|n| Some((n.to_owned(), c.name(n)?.as_str().to_owned())))
                        .collect();
                    (groups, named)
                }
                None => (Vec::new(), BTreeMap::new()),
            },
        };
        ConsoleMatch {
            line,
            groups,
            named,
        }
    }
}

/// What a fed chunk decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pattern matched this line.
    Found(String),
    /// This failure pattern matched this line.
    Failed {
        /// The failure pattern.
        pattern: String,
        /// The line.
        line: String,
    },
}

fn compile(pattern: &str) -> Result<Regex, ConsoleError> {
    Regex::new(pattern).map_err(|source| ConsoleError::BadPattern {
        pattern: pattern.to_owned(),
        source: Box::new(source),
    })
}

impl Expect {
    /// Waits for `pattern`, a regular expression matched against each line.
    pub fn new(pattern: &str) -> Result<Expect, ConsoleError> {
        Ok(Expect {
            want: Want::Pattern(compile(pattern)?),
            fail: Vec::new(),
        })
    }

    /// Waits for literal text, not a pattern.
    pub fn text(text: &str) -> Expect {
        Expect {
            want: Want::Text(text.to_owned()),
            fail: Vec::new(),
        }
    }

    /// Also ends the wait, as a failure, when `pattern` matches a line first.
    pub fn fail_on(mut self, pattern: &str) -> Result<Expect, ConsoleError> {
        self.fail.push(compile(pattern)?);
        Ok(self)
    }

    /// The pattern waited for.
    pub fn pattern(&self) -> &str {
        self.want.as_str()
    }

    /// A line matcher for one pass over a stream.
    pub fn matcher(&self) -> Matcher<'_> {
        Matcher {
            expect: self,
            line: Vec::new(),
        }
    }

    /// Reads `reader` until a verdict, the end, or `timeout`; the matching line.
    pub async fn run(&self, reader: LogReader, timeout: Duration) -> Result<String, ConsoleError> {
        self.run_match(reader, timeout).await.map(|m| m.line)
    }

    /// [`Expect::run`], with the pattern's capture groups.
    pub async fn run_match(
        &self,
        reader: LogReader,
        timeout: Duration,
    ) -> Result<ConsoleMatch, ConsoleError> {
        let line = scan(reader, timeout, false, &mut self.matcher()).await?;
        Ok(self.want.captures(line))
    }
}

/// One pass over a stream, for [`scan`].
trait Scanner {
    type Out;

    /// Feeds the next bytes; a decision, if one came.
    fn step(&mut self, chunk: &[u8]) -> Option<Result<Self::Out, ConsoleError>>;

    /// What it still waits for, for messages.
    fn waiting_for(&self) -> String;

    /// After a decision: whether it was made on a line still arriving.
    fn unfinished(&self) -> bool {
        false
    }

    /// After a decision on an unfinished line: feeds more bytes; the same decision on the
    /// whole line, once its end arrives.
    fn complete(&mut self, _chunk: &[u8]) -> Option<Self::Out> {
        None
    }
}

/// How long a match made on a line still arriving waits for the rest of the line, so that
/// `GUEST-READY` matched while the guest was still writing `GUEST-READY aarch64` reports the
/// whole line. A prompt that never ends its line is reported after this.
const LINE_GRACE: Duration = Duration::from_millis(200);

/// The rest of a line a decision was made on, within [`LINE_GRACE`]; `out` if it does not come.
async fn rest_of_line<S: Scanner>(reader: &mut LogReader, scanner: &mut S, out: S::Out) -> S::Out {
    let rest = async {
        while let Ok(Some(chunk)) = reader.next_chunk().await {
            if let Some(whole) = scanner.complete(&chunk) {
                return Some(whole);
            }
        }
        None
    };
    match tokio::time::timeout(LINE_GRACE, rest).await {
        Ok(Some(whole)) => whole,
        _ => out,
    }
}

/// Reads `reader` through `scanner` until it decides, the console ends, or `timeout`; with
/// `panic_fails`, a kernel panic line ends it too. Errors get the context seen meanwhile.
async fn scan<S: Scanner>(
    mut reader: LogReader,
    timeout: Duration,
    panic_fails: bool,
    scanner: &mut S,
) -> Result<S::Out, ConsoleError> {
    let mut seen = Watcher::default();
    let read = async {
        while let Some(chunk) = reader.next_chunk().await? {
            seen.feed(&chunk);
            if let Some(decided) = scanner.step(&chunk) {
                return match decided {
                    Ok(out) if scanner.unfinished() => {
                        Ok(rest_of_line(&mut reader, scanner, out).await)
                    }
                    d => d,
                };
            }
            if let Some(line) = seen.panic.clone().filter(|_| panic_fails) {
                return Err(failed(PANIC_MARKER.into(), line));
            }
        }
        Err(ConsoleError::Ended {
            pattern: scanner.waiting_for(),
            context: Box::default(),
        })
    };
    let outcome = match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ConsoleError::TimedOut {
            pattern: scanner.waiting_for(),
            after: timeout,
            context: Box::default(),
        }),
    };
    outcome.map_err(|mut e| {
        if let ConsoleError::Failed { context, .. }
        | ConsoleError::TimedOut { context, .. }
        | ConsoleError::Ended { context, .. }
        | ConsoleError::TooLong { context, .. } = &mut e
        {
            **context = ConsoleContext {
                instance: reader.origin().instance.clone(),
                log: reader.origin().log.clone(),
                tail: seen.tail(),
            };
        }
        e
    })
}

/// A failure without its context yet ([`scan`] adds it).
fn failed(pattern: String, line: String) -> ConsoleError {
    ConsoleError::Failed {
        pattern,
        line,
        context: Box::default(),
    }
}

impl Scanner for Matcher<'_> {
    type Out = String;

    fn step(&mut self, chunk: &[u8]) -> Option<Result<String, ConsoleError>> {
        match self.feed(chunk)? {
            Verdict::Found(line) => Some(Ok(line)),
            Verdict::Failed { pattern, line } => Some(Err(failed(pattern, line))),
        }
    }

    fn waiting_for(&self) -> String {
        self.expect.pattern().to_owned()
    }

    fn unfinished(&self) -> bool {
        !self.line.is_empty()
    }

    fn complete(&mut self, chunk: &[u8]) -> Option<String> {
        for &b in chunk {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                let line = String::from_utf8_lossy(&self.line);
                return Some(line.trim_end_matches('\r').trim().to_owned());
            }
            self.line.push(b);
        }
        None
    }
}

/// Splits a byte stream into lines and checks each against an [`Expect`].
#[derive(Debug)]
pub struct Matcher<'e> {
    expect: &'e Expect,
    line: Vec<u8>,
}

impl Matcher<'_> {
    /// Feeds the next bytes; returns the first verdict, checking failure patterns first.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Verdict> {
        for &b in chunk {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                let v = self.check();
                self.line.clear();
                if v.is_some() {
                    return v;
                }
                if b == b'\n' {
                    continue;
                }
            }
            self.line.push(b);
        }
        // The unfinished line counts too: prompts often end without a newline.
        self.check_partial()
    }

    fn check(&self) -> Option<Verdict> {
        self.verdict(Want::is_match)
    }

    fn check_partial(&self) -> Option<Verdict> {
        self.verdict(Want::is_settled_match)
    }

    fn verdict(&self, matches: fn(&Want, &str) -> bool) -> Option<Verdict> {
        let line = String::from_utf8_lossy(&self.line);
        let line = line.trim_end_matches('\r');
        if let Some(f) = self.expect.fail.iter().find(|f| f.is_match(line)) {
            return Some(Verdict::Failed {
                pattern: f.as_str().to_owned(),
                line: line.trim().to_owned(),
            });
        }
        matches(&self.expect.want, line).then(|| Verdict::Found(line.trim().to_owned()))
    }
}

/// The text between the first `start` and the first `end` after it.
struct Between<'a> {
    start: &'a str,
    end: &'a str,
    /// Before `start` is found: the last bytes, which may hold its beginning; after: the text
    /// since it.
    buf: Vec<u8>,
    started: bool,
}

impl Scanner for Between<'_> {
    type Out = String;

    fn step(&mut self, chunk: &[u8]) -> Option<Result<String, ConsoleError>> {
        // A serial console ends its lines in `\r\n`; the carriage returns are noise here, and
        // `"\n"` as a marker should mean the end of the line.
        self.buf.extend(chunk.iter().filter(|&&b| b != b'\r'));
        if !self.started {
            match find(&self.buf, self.start.as_bytes()) {
                Some(i) => {
                    self.buf.drain(..i + self.start.len());
                    self.started = true;
                }
                None => {
                    let keep = self.start.len().saturating_sub(1).min(self.buf.len());
                    self.buf.drain(..self.buf.len() - keep);
                    return None;
                }
            }
        }
        if let Some(j) = find(&self.buf, self.end.as_bytes()) {
            return Some(Ok(String::from_utf8_lossy(&self.buf[..j]).into_owned()));
        }
        (self.buf.len() > MAX_BETWEEN).then(|| {
            Err(ConsoleError::TooLong {
                start: self.start.to_owned(),
                end: self.end.to_owned(),
                limit: MAX_BETWEEN,
                context: Box::default(),
            })
        })
    }

    fn waiting_for(&self) -> String {
        if self.started { self.end } else { self.start }.to_owned()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The text between the first `start` and the first `end` after it (literal texts, which may
/// span lines), carriage returns dropped; a kernel panic line fails the wait.
pub(super) async fn between(
    reader: LogReader,
    start: &str,
    end: &str,
    timeout: Duration,
) -> Result<String, ConsoleError> {
    let mut b = Between {
        start,
        end,
        buf: Vec::new(),
        started: false,
    };
    scan(reader, timeout, true, &mut b).await
}

#[cfg(test)]
mod tests;
