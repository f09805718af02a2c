//! Requests to sluice's API over its Unix socket, with the real curl (as an
//! operator's script would), and their answers as JSON.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::netns::exec_timeout;

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code (0: no answer).
    pub code: u16,
    /// The body.
    pub body: String,
}

impl Reply {
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `metadata.resourceVersion` of the body.
    pub fn resource_version(&self) -> String {
        self.json()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// `GET /apis/sluice.dev/v1/stats`: every front end's and backend's
/// counters and the workers' ([`request`]).
pub fn stats(socket: &Path) -> Reply {
    request(socket, "GET", "/apis/sluice.dev/v1/stats", None, None)
}

/// `METHOD path` over the Unix socket with an optional body of content type
/// `ctype`; curl gives up after 10 s.
///
/// # Panics
/// If curl cannot be started or a temp file written.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    ctype: Option<&str>,
    body: Option<&str>,
) -> Reply {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let file = std::env::temp_dir().join(format!(
        "sluice-api-body-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let sock = socket.to_string_lossy().into_owned();
    let url = format!("http://localhost{path}");
    let mut argv: Vec<String> = [
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--unix-socket",
        &sock,
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(b) = body {
        std::fs::write(&file, b).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        argv.push("-H".into());
        argv.push(format!(
            "Content-Type: {}",
            ctype.unwrap_or("application/json")
        ));
        argv.push("--data-binary".into());
        argv.push(format!("@{}", file.display()));
    }
    argv.push(url);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let out = exec_timeout(cmd, Duration::from_secs(15));
    let _ = std::fs::remove_file(&file);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    Reply {
        code: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}
