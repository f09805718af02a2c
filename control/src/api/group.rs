//! Group commit of the API's single-object writes (create, replace, patch,
//! delete).
//!
//! Every commit pays for its change (compile the Services it touches) and
//! for being a commit at all: publish a table, wait until every worker has
//! loaded it, hand the state to the persister. At 100k Services the second
//! part is most of the few milliseconds a write takes, the same whatever
//! the change's size. So the writes that arrive while one is committing are
//! committed together, as a database's group commit does: one compile of
//! their joint change, one table, one wait. A write that finds the
//! reconciler idle goes at once (it never waits for company).
//!
//! What a client sees stays what one write at a time in arrival order
//! gives:
//! - a group holds distinct objects only (a second write of one object
//!   starts the next group), so each write reads its own object as it would
//!   alone (a patch merges into it) and each answer is its own write's
//!   result;
//! - a group that the store or the compile refuses is taken apart and its
//!   writes committed one by one, so a bad write fails alone, with its own
//!   error, and the others land;
//! - every write keeps its own resourceVersion, and the watch sees each
//!   event.
//!
//! How: a write queues itself and waits for its answer; one committer
//! thread takes every write queued (at most [`MAX_GROUP`]), commits them
//! under the reconciler's lock and answers each.

use std::sync::{mpsc, Arc, Mutex};

use axum::http::StatusCode;
use axum::response::Response;
use tokio::sync::oneshot;

use super::status::{self, Status};
use crate::daemon::SharedReconciler;
use crate::reconcile::Reconciler;
use crate::store::{Batch, Key, Store, Write};

/// The most writes one group commits (a bound on the first one's wait).
pub const MAX_GROUP: usize = 256;

/// One single-object write as it waits for its group.
pub trait Job: Send {
    /// The object it writes.
    fn key(&self) -> &Key;
    /// Its write, built from the store before it (no other write of its
    /// group touches its object); also the place to read what its answer
    /// needs from before (a delete answers with the object it deleted).
    ///
    /// # Errors
    /// A [`Status`] that answers the request (a patch of an absent object).
    fn write(&mut self, store: &Store) -> Result<Write, Status>;
    /// Its answer, from the store after its commit.
    ///
    /// # Errors
    /// A [`Status`] that answers the request.
    fn answer(self: Box<Self>, store: &Store) -> Result<Response, Status>;
}

type Reply = oneshot::Sender<Result<Response, Status>>;

/// The writes waiting for the reconciler: a channel to the committer, a
/// thread that takes every write queued, commits them, answers each, and
/// goes back for more. It ends when the queue is dropped.
pub struct Queue {
    tx: Mutex<mpsc::Sender<(Box<dyn Job>, Reply)>>,
}

impl Queue {
    /// A queue and its committer, which commits on `rec`.
    pub fn start(rec: SharedReconciler) -> Arc<Queue> {
        let (tx, rx) = mpsc::channel::<(Box<dyn Job>, Reply)>();
        let spawned = std::thread::Builder::new()
            .name("sluice-commit".into())
            .spawn(move || committer(&rec, &rx));
        if let Err(e) = spawned {
            // Writes are then answered "dropped unanswered" (500), and
            // said so here.
            tracing::error!("API: no committer thread: {e}");
        }
        Arc::new(Queue { tx: Mutex::new(tx) })
    }

    fn push(&self, job: Box<dyn Job>, reply: Reply) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        // A committer gone drops the reply: the request says so.
        let _ = tx.send((job, reply));
    }
}

/// The committer's loop: one write blocks it, the rest of the queue joins.
fn committer(rec: &SharedReconciler, rx: &mpsc::Receiver<(Box<dyn Job>, Reply)>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut r = rec.lock().unwrap_or_else(|p| p.into_inner());
        commit_all(&mut r, jobs);
    }
}

/// Commits `job` with whatever else is queued.
///
/// # Errors
/// The job's own [`Status`].
pub async fn submit(queue: &Queue, job: Box<dyn Job>) -> Result<Response, Status> {
    let (tx, rx) = oneshot::channel();
    queue.push(job, tx);
    rx.await
        .unwrap_or_else(|_| Err(internal("the write was dropped unanswered".into())))
}

fn internal(msg: String) -> Status {
    Status::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", msg)
}

/// Commits `jobs` in arrival order, in groups of distinct objects.
fn commit_all(r: &mut Reconciler, jobs: Vec<(Box<dyn Job>, Reply)>) {
    for group in groups(jobs) {
        commit_group(r, group);
    }
}

/// Splits `jobs`, in order, into runs of distinct objects of at most
/// [`MAX_GROUP`].
fn groups<T: AsKey>(jobs: Vec<T>) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut keys = std::collections::HashSet::new();
    for j in jobs {
        let fresh = match out.last() {
            Some(g) => g.len() == MAX_GROUP || keys.contains(j.as_key()),
            None => true,
        };
        if fresh {
            keys.clear();
            out.push(Vec::new());
        }
        keys.insert(j.as_key().clone());
        if let Some(g) = out.last_mut() {
            g.push(j);
        }
    }
    out
}

/// What [`groups`] splits by.
trait AsKey {
    fn as_key(&self) -> &Key;
}

impl AsKey for (Box<dyn Job>, Reply) {
    fn as_key(&self) -> &Key {
        self.0.key()
    }
}

/// Commits a group as one batch; refused, one write at a time.
fn commit_group(r: &mut Reconciler, group: Vec<(Box<dyn Job>, Reply)>) {
    if group.len() == 1 {
        for (job, reply) in group {
            commit_one(r, job, reply);
        }
        return;
    }
    let mut batch = Batch::default();
    let mut ready = Vec::with_capacity(group.len());
    for (mut job, reply) in group {
        match job.write(r.store()) {
            Ok(w) => {
                batch.push(w);
                ready.push((job, reply));
            }
            // Answered now; it takes no part in the batch.
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    match r.apply(batch) {
        Ok(_) => {
            for (job, reply) in ready {
                let _ = reply.send(job.answer(r.store()));
            }
        }
        Err(_) => {
            // Nothing of the group landed: each goes alone, as it would
            // have without company, and fails or lands on its own.
            for (job, reply) in ready {
                commit_one(r, job, reply);
            }
        }
    }
}

/// Commits one write alone and answers it.
fn commit_one(r: &mut Reconciler, mut job: Box<dyn Job>, reply: Reply) {
    let out = job.write(r.store()).and_then(|w| {
        let mut b = Batch::default();
        b.push(w);
        match r.apply(b) {
            Ok(_) => job.answer(r.store()),
            Err(e) => Err(status::from_store(e, Some(job.key()))),
        }
    });
    let _ = reply.send(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Kind;

    struct K(Key);

    impl AsKey for K {
        fn as_key(&self) -> &Key {
            &self.0
        }
    }

    fn k(name: &str) -> K {
        K(Key::new(Kind::Service, "default", name))
    }

    fn names(groups: &[Vec<K>]) -> Vec<Vec<&str>> {
        groups
            .iter()
            .map(|g| g.iter().map(|k| k.0.name.as_str()).collect())
            .collect()
    }

    #[test]
    fn a_repeated_object_starts_the_next_group_and_order_is_kept() {
        let g = groups(vec![k("a"), k("b"), k("a"), k("c"), k("b"), k("b")]);
        assert_eq!(names(&g), [vec!["a", "b"], vec!["a", "c", "b"], vec!["b"]]);
    }

    #[test]
    fn a_group_holds_at_most_max_group() {
        let jobs: Vec<K> = (0..MAX_GROUP * 2 + 1)
            .map(|i| k(&format!("s{i}")))
            .collect();
        let sizes: Vec<usize> = groups(jobs).iter().map(Vec::len).collect();
        assert_eq!(sizes, [MAX_GROUP, MAX_GROUP, 1]);
    }
}
