//! `sluice apply/get/delete/describe/stats/top`: kubectl's idiom over the API's Unix socket
//! (`--api-socket`, or `SLUICE_SOCKET`, default `/run/sluice/sluice.sock`).
//!
//! `apply` sends each object as a server-side apply (field manager
//! `sluice-cli`), so the server validates it whole and answers once the
//! workers run it; errors name the object and the field, from the server's
//! `Status`.

pub mod client;
pub mod describe;
pub mod ipvsadm;
pub mod stats;
pub mod table;
pub mod top;

use std::io::Read;
use std::path::{Path, PathBuf};

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::config::{self, ConfigError};
use crate::store::{Key, Kind};

/// Why a CLI command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The socket could not be reached.
    #[error("cannot reach sluice at {}: {source} (is `sluice run` running? give --api-socket or SLUICE_SOCKET)", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("API request failed: {0}")]
    Http(String),
    /// An input file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// An input file does not parse.
    #[error("{0}")]
    Parse(#[from] ConfigError),
    /// An object of the input is not one Sluice serves.
    #[error("{origin}: {reason}")]
    Object {
        /// File and object.
        origin: String,
        /// Why.
        reason: String,
    },
    /// A kind name the CLI does not know.
    #[error("unknown kind {0:?} (services/svc, endpoints/ep, endpointslices, pods/po, virtualservices/vs)")]
    Kind(String),
    /// The server refused a request (its `Status` message).
    #[error("{0}")]
    Refused(String),
    /// Some objects of a multi-object command failed (each was reported).
    #[error("{0} object(s) failed")]
    Some(usize),
}

/// Output formats of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table.
    Table,
    /// A wider table.
    Wide,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// The REST path of an object (`name: None`: of its collection in `ns`,
/// `ns: None`: cluster-wide).
pub fn path(kind: Kind, ns: Option<&str>, name: Option<&str>) -> String {
    let base = match kind.group() {
        "" => "/api/v1".to_owned(),
        g => format!("/apis/{g}/v1"),
    };
    match (ns, name) {
        (Some(ns), Some(n)) => format!("{base}/namespaces/{ns}/{}/{n}", kind.plural()),
        (Some(ns), None) => format!("{base}/namespaces/{ns}/{}", kind.plural()),
        (None, _) => format!("{base}/{}", kind.plural()),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime needs no resources that can be missing")
}

fn call(
    socket: &Path,
    method: Method,
    path: &str,
    ctype: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Value), CliError> {
    let (code, bytes) = rt().block_on(client::request(socket, method, path, ctype, body))?;
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((code, v))
}

fn refused(v: &Value, code: StatusCode) -> CliError {
    CliError::Refused(
        v.get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the server answered {code}")),
    )
}

/// `kind/name` as kubectl prints it (`service/web`,
/// `endpointslice.discovery.k8s.io/web-1`).
fn display(k: &Key) -> String {
    match k.kind.group() {
        "" => format!("{}/{}", k.kind.singular(), k.name),
        g => format!("{}.{g}/{}", k.kind.singular(), k.name),
    }
}

/// The objects of `-f` arguments: files, directories (their `.yaml`,
/// `.yml` and `.json` files, sorted) or `-` (stdin), each with its origin.
///
/// # Errors
/// [`CliError::Read`], [`CliError::Parse`] (with file:line).
pub fn read_objects(files: &[PathBuf]) -> Result<Vec<(String, Value)>, CliError> {
    let mut out = Vec::new();
    for f in files {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CliError::Read {
                path: p.to_owned(),
                source,
            })
        };
        let mut inputs = Vec::new();
        if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|source| CliError::Read {
                    path: f.clone(),
                    source,
                })?;
            inputs.push(("-".to_owned(), s));
        } else if f.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(f)
                .map_err(|source| CliError::Read {
                    path: f.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            entries.sort();
            for p in entries {
                inputs.push((p.display().to_string(), read(&p)?));
            }
        } else {
            inputs.push((f.display().to_string(), read(f)?));
        }
        for (origin, text) in inputs {
            for (line, v) in config::parse_objects(&text, &origin)? {
                out.push((format!("{origin}:{line}"), v));
            }
        }
    }
    Ok(out)
}

fn key_of(origin: &str, v: &Value) -> Result<Key, CliError> {
    Key::of(v).map_err(|e| CliError::Object {
        origin: origin.to_owned(),
        reason: e.to_string(),
    })
}

/// `sluice apply -f ...`: prints `KIND/NAME created|configured` per object.
///
/// # Errors
/// The first error that stops everything, or [`CliError::Some`] after
/// reporting each failed object on stderr.
pub fn apply(socket: &Path, files: &[PathBuf]) -> Result<(), CliError> {
    let objects = read_objects(files)?;
    let mut failed = 0;
    for (origin, v) in objects {
        let key = key_of(&origin, &v)?;
        let p = format!(
            "{}?fieldManager=sluice-cli&force=true",
            path(key.kind, Some(&key.namespace), Some(&key.name))
        );
        let body = serde_json::to_vec(&v).unwrap_or_default();
        let (code, answer) = call(
            socket,
            Method::PATCH,
            &p,
            "application/apply-patch+yaml",
            body,
        )?;
        match code {
            StatusCode::CREATED => println!("{} created", display(&key)),
            StatusCode::OK => println!("{} configured", display(&key)),
            _ => {
                failed += 1;
                eprintln!("sluice: {origin}: {key}: {}", refused(&answer, code));
            }
        }
    }
    if failed > 0 {
        return Err(CliError::Some(failed));
    }
    Ok(())
}

/// What `get` lists.
pub struct GetArgs<'a> {
    /// Kind as the user names it.
    pub kind: &'a str,
    /// One object, or all.
    pub name: Option<&'a str>,
    /// Namespace; `None` with `all_namespaces`.
    pub namespace: &'a str,
    /// Every namespace.
    pub all_namespaces: bool,
    /// Format.
    pub output: Output,
}

/// `sluice get KIND [NAME]`.
///
/// # Errors
/// [`CliError`]; a missing object is the server's NotFound message.
pub fn get(socket: &Path, a: &GetArgs<'_>) -> Result<(), CliError> {
    let kind = Kind::from_user(a.kind).ok_or_else(|| CliError::Kind(a.kind.to_owned()))?;
    let p = if a.all_namespaces && a.name.is_none() {
        path(kind, None, None)
    } else {
        path(kind, Some(a.namespace), a.name)
    };
    let (code, v) = call(socket, Method::GET, &p, "application/json", Vec::new())?;
    if code != StatusCode::OK {
        return Err(refused(&v, code));
    }
    let items: Vec<Value> = match a.name {
        Some(_) => vec![v.clone()],
        None => v["items"].as_array().cloned().unwrap_or_default(),
    };
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Output::Yaml => print!("{}", serde_norway::to_string(&v).unwrap_or_default()),
        Output::Table | Output::Wide => {
            if items.is_empty() {
                eprintln!("No resources found");
            } else {
                let rows = table::rows(kind, &items, a.output == Output::Wide, a.all_namespaces);
                print!("{}", table::render(&rows));
            }
        }
    }
    Ok(())
}

/// `sluice delete -f FILE...` (its objects in reverse order), or `sluice
/// delete KIND NAME`.
///
/// # Errors
/// As [`apply`].
pub fn delete(
    socket: &Path,
    files: &[PathBuf],
    kind_name: Option<(&str, &str)>,
    namespace: &str,
) -> Result<(), CliError> {
    let keys: Vec<(String, Key)> = match kind_name {
        Some((k, n)) => {
            let kind = Kind::from_user(k).ok_or_else(|| CliError::Kind(k.to_owned()))?;
            vec![(String::new(), Key::new(kind, namespace, n))]
        }
        // Last object first: a file lists a Service before the slices that
        // name it, and deleting the Service first would leave them naming
        // nothing (refused, as applying them alone would be).
        None => read_objects(files)?
            .into_iter()
            .rev()
            .map(|(o, v)| key_of(&o, &v).map(|k| (o, k)))
            .collect::<Result<_, _>>()?,
    };
    let mut failed = 0;
    for (origin, key) in keys {
        let p = path(key.kind, Some(&key.namespace), Some(&key.name));
        let (code, v) = call(socket, Method::DELETE, &p, "application/json", Vec::new())?;
        if code == StatusCode::OK {
            println!("{} \"{}\" deleted", key.kind.singular(), key.name);
        } else {
            failed += 1;
            let at = if origin.is_empty() {
                String::new()
            } else {
                format!("{origin}: ")
            };
            eprintln!("sluice: {at}{}", refused(&v, code));
        }
    }
    if failed > 0 {
        return Err(CliError::Some(failed));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            path(Kind::Service, Some("default"), Some("web")),
            "/api/v1/namespaces/default/services/web"
        );
        assert_eq!(
            path(Kind::EndpointSlice, Some("prod"), None),
            "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices"
        );
        assert_eq!(path(Kind::Pod, None, None), "/api/v1/pods");
    }
}
