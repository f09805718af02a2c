//! Round trip, refused files (truncated, garbage, another version), moving
//! aside without overwriting, the coalescing of writes, and the log:
//! replay, a torn last line, lines a snapshot holds, folding.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;
use crate::store::{Batch, UpsertMode, Write};

fn temp_dir(tag: &str) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "sluice-persist-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    d
}

/// A store with a Service written by `kubectl` and a Pod by the file.
fn store() -> Store {
    let mut s = Store::default();
    let mut b = Batch::default();
    b.push(Write::Upsert {
        object: json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"clusterIP": "198.18.100.10", "ports": [{"port": 80}]}}),
        owner: Arc::from("kubectl"),
        mode: UpsertMode::Create,
    });
    b.push(Write::Upsert {
        object: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
        owner: Arc::from(crate::source::file::OWNER),
        mode: UpsertMode::Apply(None),
    });
    s.commit(b, SystemTime::now(), |_| Ok::<_, ()>(())).unwrap();
    s
}

#[test]
fn round_trip_keeps_objects_owners_metadata_and_revision() {
    let dir = temp_dir("rt");
    let s = store();
    write_atomic(&dir, &encode(&Pending::of(&s))).unwrap();
    let back = load(&dir).unwrap().expect("a state");
    assert_eq!(back.objects(), s.objects());
    assert_eq!(back.revision(), s.revision());
    // No temp file is left behind.
    assert!(!dir.join("state.json.tmp").exists());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_restored_store_continues_its_revisions() {
    let dir = temp_dir("rev");
    let s = store();
    write_atomic(&dir, &encode(&Pending::of(&s))).unwrap();
    let mut back = load(&dir).unwrap().unwrap();
    let mut b = Batch::default();
    b.push(Write::Delete {
        key: Key::new(crate::store::Kind::Pod, "default", "p"),
        must_exist: true,
    });
    let c = back
        .commit(b, SystemTime::now(), |_| Ok::<_, ()>(()))
        .unwrap();
    assert_eq!(c.revision, s.revision() + 1, "no resource version reused");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn no_file_is_a_fresh_start() {
    let dir = temp_dir("fresh");
    assert!(load(&dir).unwrap().is_none());
    assert!(matches!(restore(&dir), Restore::Fresh));
}

#[test]
fn a_truncated_file_is_refused() {
    let bytes = encode(&Pending::of(&store()));
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        let e = decode(Path::new("s.json"), &bytes[..cut]).unwrap_err();
        assert!(matches!(e, PersistError::Corrupt { .. }), "{cut}: {e}");
        assert!(
            e.to_string().contains("s.json: not a valid state file"),
            "{e}"
        );
    }
}

#[test]
fn garbage_and_bad_objects_are_refused() {
    let p = Path::new("s.json");
    let cases: [&[u8]; 5] = [
        b"\x00\xff garbage",
        br#"{"format": "something-else", "version": 1}"#,
        br#"{"format": "sluice-state", "version": 1, "revision": 3}"#,
        br#"{"format": "sluice-state", "version": 1, "revision": 3, "objects": [{"owner": "x", "object": {"kind": "Nope"}}]}"#,
        br#"{"format": "sluice-state", "version": 1, "revision": 3, "objects": [{"owner": "x", "object": {"kind": "Pod", "metadata": {"name": "p"}}}]}"#,
    ];
    for c in cases {
        let e = decode(p, c).unwrap_err();
        assert!(
            matches!(e, PersistError::Corrupt { .. }),
            "{}: {e}",
            String::from_utf8_lossy(c)
        );
    }
}

#[test]
fn another_version_is_refused_naming_both() {
    let e = decode(
        Path::new("s.json"),
        br#"{"format": "sluice-state", "version": 2, "revision": 0, "objects": []}"#,
    )
    .unwrap_err();
    assert!(matches!(e, PersistError::Version { found: 2, .. }), "{e}");
    assert!(e.to_string().contains("version 2"), "{e}");
    assert!(e.to_string().contains("reads version 1"), "{e}");
}

#[test]
fn a_refused_file_is_moved_aside_never_over_another() {
    let dir = temp_dir("aside");
    fs::create_dir_all(&dir).unwrap();
    let path = state_path(&dir);
    fs::write(&path, b"first {").unwrap();
    let Restore::Refused {
        kept: Some(first), ..
    } = restore(&dir)
    else {
        panic!("a corrupt file must be refused and kept");
    };
    assert!(!path.exists());
    assert_eq!(fs::read(&first).unwrap(), b"first {");
    assert!(first
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("state.json.corrupt-"));
    // A second one within the same second gets another name.
    fs::write(&path, b"second {").unwrap();
    let second = set_aside(&path, "corrupt").unwrap();
    assert_ne!(first, second);
    assert_eq!(fs::read(&first).unwrap(), b"first {");
    assert_eq!(fs::read(&second).unwrap(), b"second {");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_coalescer_keeps_only_the_newest_state() {
    let mut c = Coalescer::default();
    for rev in 1..=100 {
        c.submit(Pending {
            revision: rev,
            objects: Objects::new(),
            changed: Changed::Keys(BTreeSet::new()),
        });
    }
    let p = c.take().expect("one state to write");
    assert_eq!(p.revision, 100);
    assert!(c.take().is_none(), "100 submits, one write");
    assert!(!c.idle());
    c.done();
    assert!(c.idle());
    assert_eq!(c.counts(), (100, 1));
}

#[test]
fn a_burst_while_a_write_runs_costs_one_more_write() {
    // The sink blocks on its first write until released, while 50 more
    // states are submitted: they must end up as one write of the newest.
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let w = writes.clone();
    let p = Persister::with_sink(move |p| {
        w.lock().unwrap().push(p.revision);
        if p.revision == 1 {
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        }
        Ok(())
    })
    .unwrap();
    let state = |revision| Pending {
        revision,
        objects: Objects::new(),
        changed: Changed::All,
    };
    p.submit(state(1));
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    for rev in 2..=51 {
        p.submit(state(rev));
    }
    release.send(()).unwrap();
    p.flush();
    assert_eq!(*writes.lock().unwrap(), [1, 51]);
    assert_eq!(p.counts(), (51, 2));
}

#[test]
fn the_persister_writes_the_file() {
    let dir = temp_dir("writer");
    let p = Persister::spawn(dir.clone()).unwrap();
    let s = store();
    p.submit(Pending::of(&s));
    p.flush();
    assert_eq!(load(&dir).unwrap().unwrap().objects(), s.objects());
    let _ = fs::remove_dir_all(&dir);
}

/// The file's bytes the plain serde way: what [`Encoder`] must give.
fn reference_encode(p: &Pending) -> Vec<u8> {
    let out = FileOut {
        format: FORMAT,
        version: VERSION,
        revision: p.revision,
        objects: p
            .objects
            .values()
            .map(|s| Entry {
                owner: std::borrow::Cow::Borrowed(&s.owner),
                object: std::borrow::Cow::Borrowed(&s.object),
            })
            .collect(),
    };
    serde_json::to_vec(&out).unwrap()
}

#[test]
fn the_caching_encoder_gives_the_serde_bytes_across_changes() {
    let mut s = store();
    let mut enc = Encoder::default();
    let check = |enc: &mut Encoder, s: &Store| {
        let p = Pending::of(s);
        let bytes = enc.encode(&p);
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            String::from_utf8(reference_encode(&p)).unwrap()
        );
        let back = decode(Path::new("state.json"), &bytes).expect("decodes");
        assert_eq!(back.objects(), s.objects());
    };
    check(&mut enc, &s);
    // The Service changes (a cached entry must not be reused), its owner
    // changes with the same object, an object is added, one deleted.
    let svc = |port: u16| {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "prod"},
            "spec": {"clusterIP": "198.18.100.10", "ports": [{"port": port}]}})
    };
    let upsert = |object: Value, owner: &str| Write::Upsert {
        object,
        owner: Arc::from(owner),
        mode: UpsertMode::Apply(None),
    };
    let commit = |s: &mut Store, w: Write| {
        let mut b = Batch::default();
        b.push(w);
        s.commit(b, SystemTime::now(), |_| Ok::<_, ()>(())).unwrap();
    };
    commit(&mut s, upsert(svc(81), "kubectl"));
    check(&mut enc, &s);
    commit(&mut s, upsert(svc(81), "other-manager"));
    check(&mut enc, &s);
    commit(
        &mut s,
        upsert(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q"}}),
            "kubectl",
        ),
    );
    check(&mut enc, &s);
    let pod =
        Key::of(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})).unwrap();
    commit(
        &mut s,
        Write::Delete {
            key: pod,
            must_exist: true,
        },
    );
    check(&mut enc, &s);
    assert_eq!(
        enc.cache.len(),
        s.objects().len(),
        "deleted objects are forgotten"
    );
    check(&mut enc, &Store::default());
}

fn svc(name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": {"clusterIP": "198.18.100.10", "ports": [{"port": port}]}})
}

/// Commits one write to `s`; returns its events.
fn commit_one(s: &mut Store, w: Write) -> Vec<Event> {
    let mut b = Batch::default();
    b.push(w);
    s.commit(b, SystemTime::now(), |_| Ok::<_, ()>(()))
        .unwrap()
        .events
}

fn upsert(object: Value) -> Write {
    Write::Upsert {
        object,
        owner: Arc::from("kubectl"),
        mode: UpsertMode::Apply(None),
    }
}

fn delete(object: &Value) -> Write {
    Write::Delete {
        key: Key::of(object).unwrap(),
        must_exist: true,
    }
}

fn assert_restores(dir: &Path, s: &Store) {
    let back = load(dir).unwrap().expect("a saved state");
    assert_eq!(back.objects(), s.objects());
    assert_eq!(back.revision(), s.revision());
}

#[test]
fn a_change_is_one_log_line_and_the_snapshot_stays() {
    let dir = temp_dir("log");
    let mut disk = Disk::new(dir.clone());
    let mut s = store();
    assert_eq!(disk.write(&Pending::of(&s)).unwrap(), Written::Snapshot);
    let snapshot = fs::read(state_path(&dir)).unwrap();
    let ev = commit_one(&mut s, upsert(svc("web", 81)));
    assert_eq!(
        disk.write(&Pending::after(&s, &ev)).unwrap(),
        Written::Appended
    );
    let ev = commit_one(&mut s, upsert(svc("api", 82)));
    assert_eq!(
        disk.write(&Pending::after(&s, &ev)).unwrap(),
        Written::Appended
    );
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
    let ev = commit_one(&mut s, delete(&pod));
    assert_eq!(
        disk.write(&Pending::after(&s, &ev)).unwrap(),
        Written::Appended
    );
    assert_eq!(
        fs::read(state_path(&dir)).unwrap(),
        snapshot,
        "snapshot untouched"
    );
    let log = fs::read_to_string(log_path(&dir)).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(
        !log.contains("198.18.100.10\",\"ports\":[{\"port\":80"),
        "{log}"
    );
    assert_restores(&dir, &s);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_last_line_is_dropped_and_the_state_before_it_restored() {
    let dir = temp_dir("torn");
    let mut disk = Disk::new(dir.clone());
    let mut s = store();
    disk.write(&Pending::of(&s)).unwrap();
    let ev = commit_one(&mut s, upsert(svc("web", 81)));
    disk.write(&Pending::after(&s, &ev)).unwrap();
    let before = s.objects().clone();
    let ev = commit_one(&mut s, upsert(svc("api", 82)));
    disk.write(&Pending::after(&s, &ev)).unwrap();
    let log = log_path(&dir);
    let bytes = fs::read(&log).unwrap();
    fs::write(&log, &bytes[..bytes.len() - 7]).unwrap();
    let back = load(&dir).unwrap().unwrap();
    assert_eq!(back.objects(), &before);
    assert_eq!(back.revision(), s.revision() - 1);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_line_refuses_the_state_and_both_files_are_kept() {
    let dir = temp_dir("badline");
    let mut disk = Disk::new(dir.clone());
    let mut s = store();
    disk.write(&Pending::of(&s)).unwrap();
    let ev = commit_one(&mut s, upsert(svc("web", 81)));
    disk.write(&Pending::after(&s, &ev)).unwrap();
    let ev = commit_one(&mut s, upsert(svc("api", 82)));
    disk.write(&Pending::after(&s, &ev)).unwrap();
    let log = log_path(&dir);
    let text = fs::read_to_string(&log).unwrap();
    let second = text.lines().nth(1).unwrap();
    fs::write(&log, format!("{{\"revision\": oops\n{second}\n")).unwrap();
    match load(&dir) {
        Err(PersistError::Corrupt { path, reason }) => {
            assert_eq!(path, log);
            assert!(reason.starts_with("line 1:"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        restore(&dir),
        Restore::Refused { kept: Some(_), .. }
    ));
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("state.json.corrupt-")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("state.log.corrupt-")),
        "{names:?}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn lines_a_newer_snapshot_holds_are_skipped() {
    // A crash after the new snapshot, before the log was emptied.
    let dir = temp_dir("skip");
    let mut disk = Disk::new(dir.clone());
    let mut s = store();
    disk.write(&Pending::of(&s)).unwrap();
    let ev = commit_one(&mut s, upsert(svc("web", 81)));
    disk.write(&Pending::after(&s, &ev)).unwrap();
    let ev = commit_one(&mut s, upsert(svc("web", 82)));
    disk.write(&Pending::after(&s, &ev)).unwrap();
    let lines = fs::read(log_path(&dir)).unwrap();
    let ev = commit_one(&mut s, upsert(svc("web", 83)));
    Disk::new(dir.clone())
        .write(&Pending::after(&s, &ev))
        .unwrap();
    fs::write(log_path(&dir), &lines).unwrap();
    let mut objects = load(&dir).unwrap().unwrap().objects().clone();
    assert_restores(&dir, &s);
    let mut rev = s.revision();
    let r = log::replay(&log_path(&dir), &lines, &mut objects, &mut rev).unwrap();
    assert_eq!((r.applied, r.skipped, r.torn), (0, 2, false));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_coalescer_keeps_what_every_replaced_state_changed() {
    let mut s = store();
    let mut c = Coalescer::default();
    let ev = commit_one(&mut s, upsert(svc("a", 1)));
    c.submit(Pending::after(&s, &ev));
    let ev = commit_one(&mut s, upsert(svc("b", 2)));
    c.submit(Pending::after(&s, &ev));
    let keys = |names: &[&str]| -> BTreeSet<Key> {
        names.iter().map(|n| Key::of(&svc(n, 1)).unwrap()).collect()
    };
    assert_eq!(c.take().unwrap().changed, Changed::Keys(keys(&["a", "b"])));
    c.done();
    c.submit(Pending::of(&s));
    let ev = commit_one(&mut s, upsert(svc("c", 3)));
    c.submit(Pending::after(&s, &ev));
    assert_eq!(
        c.take().unwrap().changed,
        Changed::All,
        "a whole write stays whole"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Any run of upserts and deletes, written through a coalescer that
    /// sometimes merges states and a log folded at a small size,
    /// restores to the store's state.
    #[test]
    fn the_snapshot_and_log_restore_any_run(
        ops in proptest::collection::vec((0u8..6, 0u16..4, proptest::bool::ANY), 1..30),
    ) {
        let dir = temp_dir("prop");
        let mut disk = Disk::with_min_log(dir.clone(), 600);
        let mut s = store();
        let mut c = Coalescer::default();
        c.submit(Pending::of(&s));
        for (name, port, write_now) in ops {
            let object = svc(&format!("s{name}"), 80 + port);
            let w = if port == 0 && s.objects().contains_key(&Key::of(&object).unwrap()) {
                delete(&object)
            } else {
                upsert(object)
            };
            let ev = commit_one(&mut s, w);
            c.submit(Pending::after(&s, &ev));
            if write_now {
                let p = c.take().unwrap();
                disk.write(&p).unwrap();
                c.done();
            }
        }
        if let Some(p) = c.take() {
            disk.write(&p).unwrap();
        }
        assert_restores(&dir, &s);
        let _ = fs::remove_dir_all(&dir);
    }
}
