//! BIRD 2 as Sluice drives it: the include file of static routes and the
//! `configure` command over BIRD's control socket.
//!
//! The include file holds one `route VIP/32 blackhole;` (`/128` for IPv6)
//! line per announced VIP, sorted, so the same set always gives the same
//! bytes. It is replaced atomically (a temporary file in the same
//! directory, then `rename(2)`), so BIRD never reads half a file; BIRD
//! reads it only when told to reconfigure. The blackhole is only the
//! route's attribute inside BIRD: the operator's `bird.conf` exports the
//! static protocol to BGP and to no kernel table, so the LB host's own
//! forwarding is untouched (Sluice takes the VIP's packets in XDP).
//!
//! The control socket speaks birdc's line protocol (BIRD's `doc/reply_codes`
//! and `sysdep/unix/main.c`): on connect BIRD greets with
//! `0001 BIRD <version> ready.`; each reply line is a four-digit code then
//! `-` (more lines follow) or a space (the last line), then text; a line
//! that starts with a space continues the previous code. `configure`
//! answers `0002-Reading configuration from ...` then one final line:
//! `0003 Reconfigured`, `0004 Reconfiguration in progress`, `0005 ...
//! queueing new config`, `0018 Reconfiguration confirmed`, `0019 Nothing to
//! do` or `0020 Configuration OK` (all mean the new file is or will be in
//! force), `0006 Reconfiguration ignored, shutting down`, or an error:
//! `8xxx` (run-time, e.g. `8002 FILE:LINE:COL syntax error`) and `9xxx`
//! (the command's own syntax). A failed reconfigure leaves BIRD on its old
//! configuration, so its announcements are what they were.
//!
//! [`ReplyParser`] is the sans-I/O half (bytes in, a [`Verdict`] out, unit
//! tested on byte fixtures); [`configure`] does the socket I/O with
//! timeouts, so a hung BIRD cannot hang the announcer.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest reply line kept (BIRD's own lines are far shorter); a
/// longer one is cut, never buffered without bound.
const MAX_LINE: usize = 4096;

/// Why BIRD was not (or may not have been) reconfigured.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// The include file could not be written or renamed into place.
    #[error("writing the BIRD include file {path}: {source}")]
    Write {
        /// The include file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The control socket could not be reached or broke mid-reply.
    #[error("BIRD control socket {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// BIRD did not answer within the time allowed.
    #[error("BIRD control socket {path}: no complete reply within {timeout:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// BIRD closed the connection before a final reply line.
    #[error("BIRD control socket {path}: closed before a final reply")]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// BIRD refused the command or the new configuration (its old one
    /// stays in force).
    #[error("BIRD refused `configure`: {code:04} {text}")]
    Refused {
        /// BIRD's reply code.
        code: u16,
        /// BIRD's text (for 8002: the file, line and column of the error).
        text: String,
    },
    /// BIRD sent something that is not its reply protocol.
    #[error("BIRD control socket {path}: not a BIRD reply: {line:?}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// The offending line.
        line: String,
    },
}

/// The text of an include file announcing `vips` of one family (`v6`
/// false: the IPv4 ones, as `/32`; true: the IPv6 ones, as `/128`),
/// sorted, one `route` line each; the other family's addresses are left
/// out (BIRD refuses a route of the wrong family in a static protocol).
pub fn include_text(vips: &BTreeSet<IpAddr>, v6: bool) -> String {
    let mut out = String::from("# Written by sluice (--bgp bird); replaced at every change.\n");
    for vip in vips.iter().filter(|a| a.is_ipv6() == v6) {
        let len = if v6 { 128 } else { 32 };
        out.push_str(&format!("route {vip}/{len} blackhole;\n"));
    }
    out
}

/// Replaces `path` with `text` atomically: written and synced to a
/// temporary file beside it, then renamed over it.
///
/// # Errors
/// [`BirdError::Write`] naming `path`; `path` is then unchanged.
pub fn write_include(path: &Path, text: &str) -> Result<(), BirdError> {
    let err = |source| BirdError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("the path names no file")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// One line of a BIRD reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The reply code (for a continuation line, the previous line's).
    pub code: u16,
    /// Whether this is the reply's last line.
    pub last: bool,
    /// The text after the code.
    pub text: String,
}

/// What a complete `configure` reply means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The new configuration is in force or will be (codes 0003, 0004,
    /// 0005, 0018, 0019, 0020).
    Applied {
        /// The final code.
        code: u16,
        /// Its text.
        text: String,
    },
    /// BIRD kept its old configuration (0006 shutting down, 8xxx, 9xxx,
    /// or any other final code).
    Refused {
        /// The final code.
        code: u16,
        /// Its text.
        text: String,
    },
}

/// Splits BIRD's reply stream into [`Line`]s, fed as bytes arrive.
///
/// Sans-I/O: it owns no socket and reads no clock. Malformed input is an
/// error value, never a panic.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    /// The code of the last numbered line (what a continuation line
    /// continues).
    code: u16,
}

impl ReplyParser {
    /// Appends `bytes` and returns the complete lines they finish.
    ///
    /// # Errors
    /// The offending line when a line is neither `NNNN-text`, `NNNN text`,
    /// ` text` (continuation) nor `+text` (an asynchronous message).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Line>, String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.buf.len() < MAX_LINE {
                    self.buf.push(b);
                }
                continue;
            }
            let raw = std::mem::take(&mut self.buf);
            let line = String::from_utf8_lossy(&raw).into_owned();
            if let Some(l) = self.line(&line)? {
                out.push(l);
            }
        }
        Ok(out)
    }

    fn line(&mut self, line: &str) -> Result<Option<Line>, String> {
        let b = line.as_bytes();
        if let Some(rest) = line.strip_prefix(' ') {
            // Continuation of the previous code's text.
            return Ok(Some(Line {
                code: self.code,
                last: false,
                text: rest.to_string(),
            }));
        }
        if line.starts_with('+') {
            // An asynchronous message (a log line), not part of a reply.
            return Ok(None);
        }
        if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || !matches!(b[4], b'-' | b' ') {
            return Err(line.to_string());
        }
        let code = line[..4].parse().map_err(|_| line.to_string())?;
        self.code = code;
        Ok(Some(Line {
            code,
            last: b[4] == b' ',
            text: line[5..].to_string(),
        }))
    }
}

/// The meaning of a reply's final line.
pub fn verdict(last: &Line) -> Verdict {
    let (code, text) = (last.code, last.text.clone());
    match code {
        3 | 4 | 5 | 18 | 19 | 20 => Verdict::Applied { code, text },
        _ => Verdict::Refused { code, text },
    }
}

/// Reads lines from `stream` until a final one, before `deadline`.
fn read_final(
    stream: &mut UnixStream,
    parser: &mut ReplyParser,
    path: &Path,
    deadline: Instant,
    timeout: Duration,
) -> Result<Line, BirdError> {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BirdError::Timeout {
                path: path.to_path_buf(),
                timeout,
            });
        }
        let sock = |source| BirdError::Socket {
            path: path.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(left)).map_err(sock)?;
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                return Err(BirdError::Closed {
                    path: path.to_path_buf(),
                })
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(sock(e)),
        };
        let lines = parser.feed(&buf[..n]).map_err(|line| BirdError::Protocol {
            path: path.to_path_buf(),
            line,
        })?;
        if let Some(last) = lines.into_iter().find(|l| l.last) {
            return Ok(last);
        }
    }
}

/// Asks the BIRD behind `socket` to re-read its configuration (birdc's
/// `configure`), waiting at most `timeout` in all.
///
/// # Errors
/// [`BirdError`]: unreachable, timed out, closed, not BIRD, or refused
/// ([`BirdError::Refused`] carries BIRD's code and message).
pub fn configure(socket: &Path, timeout: Duration) -> Result<Verdict, BirdError> {
    let deadline = Instant::now() + timeout;
    let sock = |source| BirdError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(sock)?;
    stream.set_write_timeout(Some(timeout)).map_err(sock)?;
    let mut parser = ReplyParser::default();
    let hello = read_final(&mut stream, &mut parser, socket, deadline, timeout)?;
    if hello.code != 1 {
        return Err(BirdError::Protocol {
            path: socket.to_path_buf(),
            line: format!("{:04} {}", hello.code, hello.text),
        });
    }
    stream.write_all(b"configure\n").map_err(sock)?;
    let last = read_final(&mut stream, &mut parser, socket, deadline, timeout)?;
    match verdict(&last) {
        v @ Verdict::Applied { .. } => Ok(v),
        Verdict::Refused { code, text } => Err(BirdError::Refused { code, text }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| a.parse().expect("address")).collect()
    }

    #[test]
    fn include_files_hold_one_sorted_route_per_vip_of_their_family() {
        let vips = set(&[
            "198.18.100.20",
            "2001:db8:100::10",
            "198.18.100.3",
            "198.18.100.10",
        ]);
        assert_eq!(
            include_text(&vips, false),
            "# Written by sluice (--bgp bird); replaced at every change.\n\
             route 198.18.100.3/32 blackhole;\n\
             route 198.18.100.10/32 blackhole;\n\
             route 198.18.100.20/32 blackhole;\n"
        );
        assert_eq!(
            include_text(&vips, true),
            "# Written by sluice (--bgp bird); replaced at every change.\n\
             route 2001:db8:100::10/128 blackhole;\n"
        );
    }

    #[test]
    fn an_empty_set_is_a_file_without_routes() {
        let t = include_text(&BTreeSet::new(), false);
        assert!(!t.contains("route"), "{t}");
        assert!(t.lines().all(|l| l.starts_with('#')), "{t}");
    }

    #[test]
    fn the_include_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("sluice-bird-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("vips.conf");
        write_include(&path, "route 198.18.100.10/32 blackhole;\n").expect("first");
        write_include(&path, "# none\n").expect("second");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "# none\n");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("vips.conf")]);
        let missing = dir.join("no-such-dir").join("vips.conf");
        let e = write_include(&missing, "").expect_err("no directory");
        assert!(e.to_string().contains("no-such-dir"), "{e}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// The bytes BIRD 2.0.12 sent in a real session (configure, a
    /// configure with a syntax error in the include file, a bad command).
    #[test]
    fn replies_of_a_real_bird_give_their_verdicts() {
        let cases: &[(&[u8], Verdict)] = &[
            (
                b"0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured\n",
                Verdict::Applied {
                    code: 3,
                    text: "Reconfigured".into(),
                },
            ),
            (
                b"0002-Reading configuration from bird.conf\n0004 Reconfiguration in progress\n",
                Verdict::Applied {
                    code: 4,
                    text: "Reconfiguration in progress".into(),
                },
            ),
            (
                b"0002-Reading configuration from bird.conf\n8002 /tmp/vips.conf:1:24 syntax error, unexpected CF_SYM_UNDEFINED\n",
                Verdict::Refused {
                    code: 8002,
                    text: "/tmp/vips.conf:1:24 syntax error, unexpected CF_SYM_UNDEFINED".into(),
                },
            ),
            (
                b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n",
                Verdict::Refused {
                    code: 9001,
                    text: "syntax error, unexpected CF_SYM_UNDEFINED".into(),
                },
            ),
            (
                b"0006 Reconfiguration ignored, shutting down\n",
                Verdict::Refused {
                    code: 6,
                    text: "Reconfiguration ignored, shutting down".into(),
                },
            ),
        ];
        for (bytes, want) in cases {
            let mut p = ReplyParser::default();
            let lines = p.feed(bytes).expect("well-formed");
            let last = lines.iter().find(|l| l.last).expect("a final line");
            assert_eq!(&verdict(last), want, "{}", String::from_utf8_lossy(bytes));
            assert_eq!(lines.last(), Some(last), "the final line ends the reply");
        }
    }

    #[test]
    fn bytes_may_arrive_in_any_pieces() {
        let bytes =
            b"0001 BIRD 2.0.12 ready.\n0002-Reading configuration from x\n0003 Reconfigured\n";
        for cut in 0..bytes.len() {
            let mut p = ReplyParser::default();
            let mut lines = p.feed(&bytes[..cut]).expect("first piece");
            lines.extend(p.feed(&bytes[cut..]).expect("second piece"));
            let codes: Vec<_> = lines.iter().map(|l| (l.code, l.last)).collect();
            assert_eq!(
                codes,
                vec![(1, true), (2, false), (3, true)],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn continuation_and_async_lines_are_understood() {
        let mut p = ReplyParser::default();
        let lines = p
            .feed(b"1007-Table master4:\n 198.18.100.10/32 blackhole\n+async log line\n0000 \n")
            .expect("well-formed");
        assert_eq!(
            lines,
            vec![
                Line {
                    code: 1007,
                    last: false,
                    text: "Table master4:".into()
                },
                Line {
                    code: 1007,
                    last: false,
                    text: "198.18.100.10/32 blackhole".into()
                },
                Line {
                    code: 0,
                    last: true,
                    text: String::new()
                },
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"HTTP/1.1 200 OK\n"[..],
            b"12\n",
            b"0003Reconfigured\n",
            b"\n",
            b"\xff\xfe\xfd\xfc\xfb\n",
        ] {
            let mut p = ReplyParser::default();
            assert!(p.feed(bad).is_err(), "{bad:?}");
        }
        // An endless line is cut, not buffered without bound.
        let mut p = ReplyParser::default();
        assert!(p
            .feed(&vec![b'0'; 1 << 20])
            .expect("no line yet")
            .is_empty());
        assert!(p.buf.len() <= MAX_LINE);
    }

    #[test]
    fn an_absent_socket_is_a_typed_error() {
        let path = std::env::temp_dir().join("sluice-no-such-bird.ctl");
        let e = configure(&path, Duration::from_millis(200)).expect_err("nothing listens");
        assert!(matches!(e, BirdError::Socket { .. }), "{e}");
    }

    /// A fake BIRD on a socket pair of our own: the whole exchange, and a
    /// BIRD that greets and then says nothing (the timeout).
    #[test]
    fn configure_speaks_the_protocol_and_times_out() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("sluice-bird-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bird.ctl");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.write_all(b"0001 BIRD 2.0.12 ready.\n").expect("greet");
            let mut cmd = [0u8; 10];
            s.read_exact(&mut cmd).expect("command");
            assert_eq!(&cmd, b"configure\n");
            s.write_all(b"0002-Reading configuration from bird.conf\n0003 Reconfigured\n")
                .expect("reply");
            let (mut s, _) = listener.accept().expect("accept");
            s.write_all(b"0001 BIRD 2.0.12 ready.\n").expect("greet");
            std::thread::sleep(Duration::from_millis(600));
        });
        let v = configure(&path, Duration::from_secs(2)).expect("configured");
        assert_eq!(
            v,
            Verdict::Applied {
                code: 3,
                text: "Reconfigured".into()
            }
        );
        let e = configure(&path, Duration::from_millis(300)).expect_err("silent BIRD");
        assert!(matches!(e, BirdError::Timeout { .. }), "{e}");
        server.join().expect("server");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
