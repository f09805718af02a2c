//! Loom models of the flow table: every interleaving (up to a preemption
//! bound) of a few threads over the real store code, its atomics swapped
//! for loom's by `sync.rs`. Run them with
//!
//! ```text
//! cargo test --release -p sluice-dataplane --features loom --lib loom
//! ```
//!
//! (`scripts/test.sh` does, into its own target directory). The models are
//! kept small (two records, one bucket) so that they finish in seconds.

use loom::sync::Arc;
use loom::thread;

use super::*;
use crate::types::{proto, Addr, FlowKey, L2Hop};

fn entry(n: u8) -> FlowEntry {
    let original = FlowKey {
        src: Addr::from_v4([198, 18, 0, n]),
        dst: Addr::from_v4([198, 18, 1, 1]),
        sport: 1000 + u16::from(n),
        dport: 80,
        proto: proto::TCP,
    };
    FlowEntry {
        original,
        reply: FlowKey {
            src: Addr::from_v4([198, 18, 2, 1]),
            dst: original.src,
            sport: 8080,
            dport: original.sport,
            proto: proto::TCP,
        },
        orig_hop: L2Hop {
            port: 0,
            mac: [2, 0, 0, 0, 0, 1],
        },
        reply_hop: L2Hop {
            port: 0,
            mac: [2, 0, 0, 0, 0, 2],
        },
        service: 0,
        backend: 0,
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    // Bounded preemptions keep the search to seconds; the race below
    // needs two.
    b.preemption_bound = Some(3);
    b.check(f);
}

/// A worker looks a flow up and acts on it with the id (a client's RST:
/// touch, then remove), while another worker removes that flow and inserts
/// another one, which reuses the record (the free stack is LIFO). The new
/// flow must come out untouched: still there, still `SYN_SENT`. Without the
/// generation in [`FlowId`] the stale id closes and removes it.
#[test]
fn loom_stale_id_never_acts_on_a_reused_record() {
    model(|| {
        let t = Arc::new(FlowTable::build(2, 0, Timeouts::default(), [1, 2, 3, 4]));
        let (a, b) = (entry(1), entry(2));
        let id_a = t.insert(&a, 0).expect("insert a");
        let t1 = t.clone();
        let worker = thread::spawn(move || {
            if let Some(h) = t1.lookup(&a.original, 0) {
                t1.touch(h.id, Direction::Original, tcp_flags::RST, 0);
                t1.remove(h.id);
            }
        });
        t.remove(id_a);
        let id_b = t.insert(&b, 0).expect("insert b: a record is free");
        worker.join().unwrap();
        let h = t
            .lookup(&b.original, 0)
            .expect("flow b was removed by a stale id");
        assert_eq!(h.id, id_b);
        assert_eq!(
            h.state,
            FlowState::SynSent,
            "flow b was touched by a stale id"
        );
        assert!(t.lookup(&a.original, 0).is_none());
        assert_eq!(t.len(), 1);
    });
}

/// A worker marks an established flow for the fast path while another
/// worker handles its FIN (touch, then lookup to see whether to withdraw).
/// Either the mark is refused (the FIN landed first: the first worker must
/// not publish) or the second worker's lookup sees it (and withdraws):
/// never a published flow whose FIN withdraws nothing.
#[test]
fn loom_mark_and_fin_never_miss_each_other() {
    model(|| {
        let t = Arc::new(FlowTable::build(2, 0, Timeouts::default(), [1, 2, 3, 4]));
        let a = entry(1);
        let id = t.insert(&a, 0).expect("insert");
        t.touch(id, Direction::Original, tcp_flags::ACK, 0);
        let t1 = t.clone();
        let fin = thread::spawn(move || {
            t1.touch(id, Direction::Reply, tcp_flags::FIN | tcp_flags::ACK, 0);
            t1.lookup(&a.reply, 0).expect("flow").fast_path
        });
        let marked = t.mark_fast_path(id, 0);
        let seen = fin.join().unwrap();
        assert!(!marked || seen, "marked, but the FIN's lookup missed it");
        let h = t.lookup(&a.original, 0).expect("flow");
        assert_eq!(h.state, FlowState::FinWait, "the mark lost the FIN");
        assert_eq!(h.fast_path, marked, "the FIN lost the mark");
    });
}
