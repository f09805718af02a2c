//! What a health check is ([`CheckSpec`]) and its one-line text form, the
//! value of the `sluice.dev/health-check` annotation:
//!
//! ```text
//! tcp  [port=N] [interval=2s] [timeout=1s] [rise=2] [fall=3]
//! http [path=/] [status=200] [port=N] [interval=…] [timeout=…] [rise=…] [fall=…]
//! udp  send=TEXT [expect=PREFIX] [port=N] [interval=…] [timeout=…] [rise=…] [fall=…]
//! ```
//!
//! Options are `key=value` words separated by blanks, in any order, each at
//! most once; a value has no blank in it. Durations take humantime's units
//! (`500ms`, `2s`, `1m`). `port` defaults to the real server's own port.
//! The defaults (interval 2 s, timeout 1 s, rise 2, fall 3) are HAProxy's
//! `inter`/`rise`/`fall`; keepalived's `delay_loop`, `connect_timeout` and
//! `retry` map onto interval, timeout and fall. The timeout may not exceed
//! the interval, so that one target never has two probes in flight.
//!
//! The type is plain data with serde, independent of any object model, so
//! that a `VirtualService` or a keepalived.conf `real_server` block can
//! carry one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default time between the starts of two probes of one target.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Default time a probe may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default consecutive successes that bring a down server back.
pub const DEFAULT_RISE: u32 = 2;
/// Default consecutive failures that take an up server down.
pub const DEFAULT_FALL: u32 = 3;
/// The largest rise or fall count.
pub const MAX_COUNT: u32 = 100;
/// The shortest interval (and timeout) accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest UDP payload or expected prefix, in bytes.
pub const MAX_PAYLOAD: usize = 512;

/// What one probe does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Probe {
    /// A TCP connect; up when the handshake completes in time.
    Tcp,
    /// An HTTP/1.0 `GET path`; up when the status line carries `status`
    /// (keepalived's HTTP_GET with `status_code`).
    Http {
        /// Request path.
        path: String,
        /// Expected status code.
        status: u16,
    },
    /// A UDP datagram `send`; with `expect`, up when a reply starting with
    /// it arrives in time; without, up unless an ICMP port unreachable
    /// comes back (keepalived's UDP_CHECK without `require_reply`).
    Udp {
        /// Payload sent.
        send: String,
        /// Expected prefix of the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
    },
}

impl Probe {
    /// `tcp`, `http` or `udp`.
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Tcp => "tcp",
            Probe::Http { .. } => "http",
            Probe::Udp { .. } => "udp",
        }
    }
}

/// A health check of a real server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckSpec {
    /// The probe.
    #[serde(flatten)]
    pub probe: Probe,
    /// Port probed; None: the real server's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Time between the starts of two probes.
    #[serde(with = "human", default = "default_interval")]
    pub interval: Duration,
    /// Time one probe may take before it counts as failed.
    #[serde(with = "human", default = "default_timeout")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down server back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an up server down.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_rise() -> u32 {
    DEFAULT_RISE
}
fn default_fall() -> u32 {
    DEFAULT_FALL
}

/// Durations as humantime text (`2s`, `500ms`).
mod human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// What happens to a real server its check finds down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckAction {
    /// Weight 0: no new flows, existing ones continue (keepalived's
    /// `inhibit_on_failure`, IPVS's quiescent server).
    #[default]
    Weight0,
    /// Removed from the service, as keepalived does by default: its flows
    /// are then treated as those of a removed endpoint.
    Remove,
}

impl CheckAction {
    /// Parses `weight0` or `remove`.
    ///
    /// # Errors
    /// [`SpecError::BadAction`] for anything else.
    pub fn parse(text: &str) -> Result<CheckAction, SpecError> {
        match text.trim() {
            "weight0" => Ok(CheckAction::Weight0),
            "remove" => Ok(CheckAction::Remove),
            other => Err(SpecError::BadAction(other.to_owned())),
        }
    }
}

/// Why a check's text does not parse. Each names the option at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Nothing but blanks.
    #[error("empty: give tcp, http or udp and its options")]
    Empty,
    /// The first word is not a check type.
    #[error("unknown check type {0:?}: tcp, http or udp")]
    UnknownType(String),
    /// A word without `=`.
    #[error("{0:?}: options are key=value")]
    NotKeyValue(String),
    /// An option this check type does not take.
    #[error("{key:?} is not an option of a {kind} check (options: {known})")]
    UnknownOption {
        /// The option.
        key: String,
        /// The check type.
        kind: &'static str,
        /// What it takes.
        known: &'static str,
    },
    /// An option given twice.
    #[error("{0} is given twice")]
    Duplicate(String),
    /// An option's value is out of range or malformed.
    #[error("{key}={value:?}: {reason}")]
    BadValue {
        /// The option.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A required option is missing.
    #[error("{key} is required for a {kind} check")]
    Missing {
        /// The option.
        key: &'static str,
        /// The check type.
        kind: &'static str,
    },
    /// The timeout exceeds the interval.
    #[error("timeout {timeout:?} is longer than interval {interval:?}")]
    TimeoutOverInterval {
        /// The timeout.
        timeout: Duration,
        /// The interval.
        interval: Duration,
    },
    /// The action is neither `weight0` nor `remove`.
    #[error("{0:?}: must be weight0 or remove")]
    BadAction(String),
}

const COMMON: &str = "port, interval, timeout, rise, fall";

impl CheckSpec {
    /// Parses the annotation's text form (see the module doc).
    ///
    /// # Errors
    /// A [`SpecError`] naming the first option at fault.
    pub fn parse(text: &str) -> Result<CheckSpec, SpecError> {
        let mut words = text.split_whitespace();
        let kind = words.next().ok_or(SpecError::Empty)?;
        let (kind, known): (&'static str, &'static str) = match kind {
            "tcp" => ("tcp", COMMON),
            "http" => ("http", "path, status, port, interval, timeout, rise, fall"),
            "udp" => ("udp", "send, expect, port, interval, timeout, rise, fall"),
            other => return Err(SpecError::UnknownType(other.to_owned())),
        };
        let mut opts = Opts::default();
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue(w.to_owned()))?;
            opts.set(kind, known, k, v)?;
        }
        opts.build(kind)
    }

    /// Checks the ranges (for a spec that came through serde).
    ///
    /// # Errors
    /// As [`CheckSpec::parse`].
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |key, value: String, reason: &str| SpecError::BadValue {
            key,
            value,
            reason: reason.to_owned(),
        };
        for (key, d) in [("interval", self.interval), ("timeout", self.timeout)] {
            if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
                return Err(bad(key, format!("{d:?}"), "must be between 100ms and 1h"));
            }
        }
        if self.timeout > self.interval {
            return Err(SpecError::TimeoutOverInterval {
                timeout: self.timeout,
                interval: self.interval,
            });
        }
        for (key, n) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=MAX_COUNT).contains(&n) {
                return Err(bad(key, n.to_string(), "must be between 1 and 100"));
            }
        }
        if self.port == Some(0) {
            return Err(bad("port", "0".into(), "must be between 1 and 65535"));
        }
        match &self.probe {
            Probe::Tcp => {}
            Probe::Http { path, status } => {
                if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(bad(
                        "path",
                        path.clone(),
                        "must start with / and hold no blank or control character",
                    ));
                }
                if !(100..=599).contains(status) {
                    return Err(bad(
                        "status",
                        status.to_string(),
                        "must be between 100 and 599",
                    ));
                }
            }
            Probe::Udp { send, expect } => {
                if send.is_empty() || send.len() > MAX_PAYLOAD {
                    return Err(bad("send", send.clone(), "must be 1 to 512 bytes"));
                }
                if let Some(e) = expect.as_ref().filter(|e| e.len() > MAX_PAYLOAD) {
                    return Err(bad("expect", e.clone(), "must be at most 512 bytes"));
                }
            }
        }
        Ok(())
    }
}

/// The options as they are read, before defaults.
#[derive(Default)]
struct Opts {
    port: Option<u16>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
    path: Option<String>,
    status: Option<u16>,
    send: Option<String>,
    expect: Option<String>,
}

fn number<T: std::str::FromStr>(key: &'static str, v: &str) -> Result<T, SpecError> {
    v.parse().map_err(|_| SpecError::BadValue {
        key,
        value: v.to_owned(),
        reason: "not a number in range".into(),
    })
}

fn duration(key: &'static str, v: &str) -> Result<Duration, SpecError> {
    humantime::parse_duration(v).map_err(|e| SpecError::BadValue {
        key,
        value: v.to_owned(),
        reason: format!("not a duration such as 2s or 500ms ({e})"),
    })
}

/// Stores `v` in `slot` unless it already holds one.
fn put<T>(slot: &mut Option<T>, key: &str, v: T) -> Result<(), SpecError> {
    if slot.replace(v).is_some() {
        return Err(SpecError::Duplicate(key.to_owned()));
    }
    Ok(())
}

impl Opts {
    fn set(
        &mut self,
        kind: &'static str,
        known: &'static str,
        k: &str,
        v: &str,
    ) -> Result<(), SpecError> {
        match (kind, k) {
            (_, "port") => put(&mut self.port, k, number("port", v)?),
            (_, "interval") => put(&mut self.interval, k, duration("interval", v)?),
            (_, "timeout") => put(&mut self.timeout, k, duration("timeout", v)?),
            (_, "rise") => put(&mut self.rise, k, number("rise", v)?),
            (_, "fall") => put(&mut self.fall, k, number("fall", v)?),
            ("http", "path") => put(&mut self.path, k, v.to_owned()),
            ("http", "status") => put(&mut self.status, k, number("status", v)?),
            ("udp", "send") => put(&mut self.send, k, v.to_owned()),
            ("udp", "expect") => put(&mut self.expect, k, v.to_owned()),
            _ => Err(SpecError::UnknownOption {
                key: k.to_owned(),
                kind,
                known,
            }),
        }
    }

    fn build(self, kind: &'static str) -> Result<CheckSpec, SpecError> {
        let probe = match kind {
            "http" => Probe::Http {
                path: self.path.unwrap_or_else(|| "/".into()),
                status: self.status.unwrap_or(200),
            },
            "udp" => Probe::Udp {
                send: self.send.ok_or(SpecError::Missing { key: "send", kind })?,
                expect: self.expect,
            },
            _ => Probe::Tcp,
        };
        let spec = CheckSpec {
            probe,
            port: self.port,
            interval: self.interval.unwrap_or(DEFAULT_INTERVAL),
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            rise: self.rise.unwrap_or(DEFAULT_RISE),
            fall: self.fall.unwrap_or(DEFAULT_FALL),
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_with_every_option() {
        let s = CheckSpec::parse(
            "http path=/healthz status=204 port=81 interval=2s timeout=500ms rise=2 fall=3",
        )
        .unwrap();
        assert_eq!(
            s,
            CheckSpec {
                probe: Probe::Http {
                    path: "/healthz".into(),
                    status: 204
                },
                port: Some(81),
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
                rise: 2,
                fall: 3,
            }
        );
    }

    #[test]
    fn defaults_fill_in() {
        let s = CheckSpec::parse("  tcp ").unwrap();
        assert_eq!(s.probe, Probe::Tcp);
        assert_eq!((s.interval, s.timeout), (DEFAULT_INTERVAL, DEFAULT_TIMEOUT));
        assert_eq!((s.rise, s.fall, s.port), (2, 3, None));
        let h = CheckSpec::parse("http").unwrap();
        assert_eq!(
            h.probe,
            Probe::Http {
                path: "/".into(),
                status: 200
            }
        );
        let u = CheckSpec::parse("udp send=ping expect=pong fall=1").unwrap();
        assert_eq!(
            u.probe,
            Probe::Udp {
                send: "ping".into(),
                expect: Some("pong".into())
            }
        );
        assert_eq!(u.fall, 1);
    }

    #[test]
    fn bad_text_names_the_option() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("icmp", "unknown check type \"icmp\""),
            ("tcp interval", "\"interval\": options are key=value"),
            ("tcp path=/x", "\"path\" is not an option of a tcp check"),
            ("http status=abc", "status=\"abc\": not a number"),
            (
                "http status=700",
                "status=\"700\": must be between 100 and 599",
            ),
            ("http path=healthz", "path=\"healthz\": must start with /"),
            ("tcp interval=soon", "interval=\"soon\": not a duration"),
            ("tcp interval=10ms", "interval=\"10ms\": must be between"),
            ("tcp rise=0", "rise=\"0\": must be between 1 and 100"),
            ("tcp fall=101", "fall=\"101\""),
            ("tcp port=0", "port=\"0\""),
            ("tcp port=70000", "port=\"70000\": not a number"),
            ("tcp rise=1 rise=2", "rise is given twice"),
            ("udp expect=pong", "send is required for a udp check"),
            (
                "tcp interval=1s timeout=2s",
                "timeout 2s is longer than interval 1s",
            ),
        ];
        for (text, want) in cases {
            let e = CheckSpec::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn actions() {
        assert_eq!(CheckAction::parse("weight0"), Ok(CheckAction::Weight0));
        assert_eq!(CheckAction::parse(" remove "), Ok(CheckAction::Remove));
        let e = CheckAction::parse("drain").unwrap_err().to_string();
        assert!(e.contains("\"drain\": must be weight0 or remove"), "{e}");
    }

    #[test]
    fn serde_round_trip_and_defaults() {
        let s = CheckSpec::parse("udp send=ping expect=pong interval=3s timeout=1s").unwrap();
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["type"], "udp");
        assert_eq!(j["interval"], "3s");
        let back: CheckSpec = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
        let min: CheckSpec = serde_json::from_str(r#"{"type":"tcp"}"#).unwrap();
        assert_eq!(min, CheckSpec::parse("tcp").unwrap());
    }
}
