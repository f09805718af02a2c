//! The `--config` file as a source: its objects are applied at start and on
//! each SIGHUP; the objects it wrote before and no longer holds are deleted.
//!
//! The file is first checked on its own, exactly as `sluice check` does, so
//! its errors keep their `file:line` and a bad file is refused whole
//! before the store is touched (the old state keeps serving).
//!
//! The file is YAML, or a keepalived.conf when its syntax says so (its
//! first word is a keepalived block keyword: `config::keepalived`); both
//! give the store the same objects.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use tracing::info;

use crate::config::{self, keepalived, CompileCtx, ConfigError};
use crate::store::{Batch, Key, Store, UpsertMode, Write};

/// The owner (field manager) of the objects the file wrote.
pub const OWNER: &str = "sluice-config-file";

/// The file's objects, checked.
///
/// # Errors
/// [`ConfigError`] with the file and line.
pub fn read(path: &Path, ctx: &CompileCtx) -> Result<Vec<serde_json::Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    if keepalived::is_keepalived(&text) {
        return read_keepalived(path, &text, ctx);
    }
    config::load_file_with(path, ctx)?;
    Ok(config::parse_objects(&text, &path.display().to_string())?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// A keepalived.conf's `VirtualService`s, checked as a whole; what it
/// holds that Sluice ignores (`global_defs`, `vrrp_*`, …) is logged, one
/// line each.
fn read_keepalived(
    path: &Path,
    text: &str,
    ctx: &CompileCtx,
) -> Result<Vec<serde_json::Value>, ConfigError> {
    let parsed = keepalived::parse(path, text)?;
    let objects: Vec<serde_json::Value> = parsed.objects.into_iter().map(|(_, o)| o).collect();
    config::load_objects(&objects, &path.display().to_string(), ctx)?;
    for n in &parsed.notices {
        info!("keepalived.conf: {n}");
    }
    info!(
        "keepalived.conf {}: {} virtual servers",
        path.display(),
        objects.len()
    );
    Ok(objects)
}

/// The batch that makes the store hold `objects` for the file: an apply of
/// each, and a delete of each object the file owns and no longer holds.
pub fn batch(objects: Vec<serde_json::Value>, store: &Store) -> Batch {
    let owner: Arc<str> = Arc::from(OWNER);
    let mut keep = BTreeSet::new();
    let mut b = Batch::default();
    for object in objects {
        if let Ok(k) = Key::of(&object) {
            keep.insert(k);
        }
        b.push(Write::Upsert {
            object,
            owner: owner.clone(),
            mode: UpsertMode::Apply(None),
        });
    }
    for (k, s) in store.objects() {
        if &*s.owner == OWNER && !keep.contains(k) {
            b.push(Write::Delete {
                key: k.clone(),
                must_exist: false,
            });
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn svc(name: &str) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name}, "spec": {"clusterIP": "198.18.100.10", "ports": [{"port": 80}]}})
    }

    #[test]
    fn objects_that_left_the_file_are_deleted_but_not_others() {
        let mut store = Store::default();
        let mut b = batch(vec![svc("a"), svc("b")], &store);
        b.push(Write::Upsert {
            object: svc("api-owned"),
            owner: Arc::from("kubectl"),
            mode: UpsertMode::Create,
        });
        store
            .commit(b, SystemTime::now(), |_| Ok::<_, ()>(()))
            .unwrap();
        let b = batch(vec![svc("b")], &store);
        store
            .commit(b, SystemTime::now(), |_| Ok::<_, ()>(()))
            .unwrap();
        let names: Vec<_> = store.objects().keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["api-owned", "b"]);
    }

    #[test]
    fn lists_and_documents_become_objects_with_errors_at_their_line() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}}\n---\n{apiVersion: v1, kind: Pod, metadata: {name: p}}\n";
        let objs = config::parse_objects(text, "f.yaml").unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1].0, 5);
        let e = config::parse_objects("a: 1\n---\nb: 1\n  c: 2\n", "f.yaml").unwrap_err();
        assert!(e.to_string().starts_with("f.yaml:4:"), "{e}");
    }
}
