//! Round trip, refused files (truncated, garbage, another version), moving
//! aside without overwriting, and the coalescing of writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
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
