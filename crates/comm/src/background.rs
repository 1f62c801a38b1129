//! Asynchronous collectives: a communication thread that runs submitted collectives in order while the caller
//! keeps computing, each returning a [`Handle`] to wait on (DeepSpeed's `async_op=True`). Scoped, so the
//! collectives may borrow buffers the caller is still writing elsewhere (e.g. one layer's gradients while the
//! previous layer's backward runs).

use crate::{CommError, Communicator, Op};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::Scope;

type Job<'env> = Box<dyn FnOnce(&dyn Communicator) + Send + 'env>;

/// A communication thread in a [`std::thread::scope`]. Collectives run in submission order, which every rank
/// must share, as for blocking calls. Dropping it lets the thread finish the queue and end.
pub struct Background<'env> {
    jobs: Sender<Job<'env>>,
    rank: usize,
}

/// The result of a submitted collective.
pub struct Handle<T> {
    result: Receiver<Result<T, CommError>>,
    rank: usize,
}

impl<T> Handle<T> {
    /// Blocks until the collective has run (its own timeout bounds the wait).
    pub fn wait(self) -> Result<T, CommError> {
        self.result.recv().unwrap_or_else(|_| {
            Err(CommError::Broken { op: Op::Barrier, rank: self.rank, cause: "the communication thread ended".into() })
        })
    }
}

impl<'env> Background<'env> {
    /// Starts the communication thread for `comm` in `scope`.
    pub fn start<'scope>(scope: &'scope Scope<'scope, 'env>, comm: &'env dyn Communicator) -> Background<'env> {
        let (jobs, queue) = channel::<Job<'env>>();
        scope.spawn(move || queue.into_iter().for_each(|job| job(comm)));
        Background { jobs, rank: comm.rank() }
    }

    /// Queues `collective` (any sequence of calls on the communicator) and returns its handle.
    pub fn submit<T: Send + 'env>(
        &self,
        collective: impl FnOnce(&dyn Communicator) -> Result<T, CommError> + Send + 'env,
    ) -> Handle<T> {
        let (tx, result) = channel();
        let job: Job<'env> = Box::new(move |comm| {
            // The receiver may be gone if the caller stopped waiting after an error of its own.
            let _ = tx.send(collective(comm));
        });
        // The thread lives as long as `self`; a failed send means it panicked, which the handle reports.
        let _ = self.jobs.send(job);
        Handle { result, rank: self.rank }
    }
}
