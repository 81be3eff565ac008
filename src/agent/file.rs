//! Moving files in and out of the guest with `guest-file-open/read/write/close`, and their mode
//! with `stat`/`chmod` run by `guest-exec` (qemu-ga has no command for modes).

use qapi::qga::{guest_file_close, guest_file_open, guest_file_read, guest_file_write};

use super::{Agent, AgentError, ExecRequest};

/// How many bytes one `guest-file-read` or `guest-file-write` moves. Each becomes one JSON
/// line of about 1.4 MiB of base64, well below both sides' limits, and one round trip per MiB
/// costs little next to encoding it.
pub const FILE_CHUNK: usize = 1 << 20;

/// The tail of qemu-ga's message when `fopen` fails with `ENOENT` (it appends `strerror`, and
/// the agent runs in the C locale).
const ENOENT: &str = "No such file or directory";

impl Agent {
    /// The whole content of a guest file.
    ///
    /// Fails with [`AgentError::MissingFile`] if it (or a folder on its path) does not exist.
    /// Cancelling this leaves the file open in the agent until the agent restarts.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        let handle = match self.open(path, "r").await {
            Err(AgentError::Guest { desc, .. }) if desc.ends_with(ENOENT) => {
                return Err(AgentError::MissingFile { path: path.into() });
            }
            other => other?,
        };
        let read = self.read_all(handle).await;
        let closed = self.close(handle).await;
        let data = read?;
        closed?;
        Ok(data)
    }

    /// Creates or replaces a guest file with `bytes`, and sets its permission bits to `mode`
    /// (e.g. `0o644`) if given, before any byte is written.
    ///
    /// Without `mode`, a replaced file keeps its mode and a new one gets the agent's default,
    /// which for qemu-ga 7.2 is 0666: world-writable. Fails with
    /// [`AgentError::MissingFolder`] if the folder does not exist. Cancelling this leaves the
    /// file partly written and open in the agent.
    pub async fn write_file(
        &self,
        path: &str,
        bytes: &[u8],
        mode: Option<u32>,
    ) -> Result<(), AgentError> {
        let handle = match self.open(path, "w").await {
            Err(AgentError::Guest { desc, .. }) if desc.ends_with(ENOENT) => {
                return Err(AgentError::MissingFolder {
                    folder: parent(path),
                });
            }
            other => other?,
        };
        let written = async {
            if let Some(mode) = mode {
                self.set_file_mode(path, mode).await?;
            }
            for chunk in bytes.chunks(FILE_CHUNK) {
                self.write_chunk(handle, chunk).await?;
            }
            Ok(())
        }
        .await;
        let closed = self.close(handle).await;
        written?;
        closed
    }

    /// A guest file's permission bits, e.g. `0o644` (with `stat -c %a`).
    pub async fn file_mode(&self, path: &str) -> Result<u32, AgentError> {
        let out = self
            .helper("stat", &["-c", "%a", &not_an_option(path)])
            .await?;
        let text = String::from_utf8_lossy(&out);
        u32::from_str_radix(text.trim(), 8).map_err(|_| AgentError::Malformed {
            command: "stat -c %a".into(),
            reply: super::shorten(&text),
        })
    }

    /// Sets a guest file's permission bits, e.g. to `0o600` (with `chmod`).
    pub async fn set_file_mode(&self, path: &str, mode: u32) -> Result<(), AgentError> {
        let mode = format!("{mode:o}");
        self.helper("chmod", &[&mode, &not_an_option(path)])
            .await
            .map(drop)
    }

    /// Runs a small guest program that should succeed; its stdout.
    async fn helper(&self, program: &str, args: &[&str]) -> Result<Vec<u8>, AgentError> {
        let mut request = ExecRequest::new(program, args.iter().copied());
        request.timeout = Some(self.reply_timeout);
        let out = self.exec(request).await?;
        if !out.status.success() {
            return Err(AgentError::Helper {
                command: format!("{program} {}", args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }

    async fn open(&self, path: &str, mode: &str) -> Result<i64, AgentError> {
        self.call(guest_file_open {
            path: path.into(),
            mode: Some(mode.into()),
        })
        .await
    }

    async fn close(&self, handle: i64) -> Result<(), AgentError> {
        self.call(guest_file_close { handle }).await.map(drop)
    }

    async fn read_all(&self, handle: i64) -> Result<Vec<u8>, AgentError> {
        let mut data = Vec::new();
        loop {
            let chunk = self
                .call(guest_file_read {
                    handle,
                    count: Some(FILE_CHUNK as i64),
                })
                .await?;
            let got = chunk.buf_b64.len();
            data.extend(chunk.buf_b64);
            // An empty read that is not at the end (a pipe, say) would otherwise loop forever.
            if chunk.eof || got == 0 {
                return Ok(data);
            }
        }
    }

    /// Writes one chunk, again from where the agent stopped if it wrote less.
    async fn write_chunk(&self, handle: i64, chunk: &[u8]) -> Result<(), AgentError> {
        let mut rest = chunk;
        while !rest.is_empty() {
            let wrote = self
                .call(guest_file_write {
                    handle,
                    buf_b64: rest.to_vec(),
                    count: None,
                })
                .await?
                .count;
            let wrote = usize::try_from(wrote).unwrap_or(0).min(rest.len());
            if wrote == 0 {
                return Err(AgentError::Malformed {
                    command: "guest-file-write".into(),
                    reply: format!("wrote 0 of {} bytes", rest.len()),
                });
            }
            rest = &rest[wrote..];
        }
        Ok(())
    }
}

/// The folder part of a guest path, for messages.
fn parent(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) => "/".into(),
        Some((folder, _)) => folder.into(),
        None => ".".into(),
    }
}

/// A path that `stat` and `chmod` cannot take for an option (not every guest's tools know
/// `--`).
fn not_an_option(path: &str) -> String {
    if path.starts_with('-') {
        format!("./{path}")
    } else {
        path.into()
    }
}
