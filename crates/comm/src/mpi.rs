//! One process per rank through the system's MPI library (OpenMPI or MPICH), via rsmpi (the `mpi` crate).
//! Built only with the cargo feature `mpi`.
//!
//! # System packages
//!
//! Building needs the MPI headers and libraries (`mpicc`, which rsmpi's build script asks for the flags) and
//! libclang (rsmpi generates its bindings with bindgen at build time); running needs `mpirun`. On Debian/Ubuntu:
//! `libopenmpi-dev openmpi-bin libclang-dev` (MPICH: `libmpich-dev mpich` instead of the OpenMPI pair), which
//! `scripts/install-mpi.sh` installs. `scripts/test-mpi.sh` runs the checks under `mpirun -n 2`.
//!
//! # Timeouts: every collective is non-blocking and polled until a deadline
//!
//! A blocking MPI collective cannot be interrupted portably, so every collective here is the non-blocking
//! MPI-3 form of the one it implements (`MPI_Iallreduce`, `MPI_Ireduce_scatter[_block]`, `MPI_Iallgatherv`,
//! `MPI_Ibcast`, `MPI_Ibarrier`), started on the calling thread and completed by polling `MPI_Test` until it
//! finishes or the timeout passes. The deadline thus covers the whole collective, not only the arrival of the
//! peers, and no extra barrier round trip is paid before each one. On expiry the call returns
//! [`CommError::Timeout`] with an empty `missing` list: plain MPI cannot tell which peer did not arrive, only
//! that one did not. The communicator is then broken: every later collective fails at once with
//! [`CommError::Broken`].
//!
//! The timeout is [`MpiComm::with_timeout`], else `DEEPSPEED_TIMEOUT` in whole minutes as DeepSpeed reads it,
//! else 30 minutes.
//!
//! MPI keeps reading and writing a request's buffers until it completes, and a collective request cannot be
//! cancelled. So each collective works on staging buffers that the communicator owns, and a request that timed
//! out keeps its staging buffers alive inside the communicator; the caller's slices are never handed to MPI.
//! The price is one copy in and one copy out per collective, and memory for the largest send and receive so
//! far (the buffers are reused, so steady-state collectives do not allocate). Measured at 2 ranks on the 2-core
//! development machine: an all-reduce of 4 Mi floats took about 20 ms against about 17 ms for a bare blocking
//! `MPI_Allreduce`.
//!
//! # Threads
//!
//! MPI is initialized asking for `MPI_THREAD_MULTIPLE` (at least `MPI_THREAD_SERIALIZED` is required), so the
//! communicator may be used from any thread, for instance a communication thread that overlaps backward.
//! Collectives called from several threads at once run one after the other; every rank must still issue them
//! in the same order.
//!
//! # Leaving: finalize or abort, never a hang
//!
//! Dropping an [`MpiComm`] is a collective: it runs a timed barrier and then `MPI_Finalize` (which waits for
//! every rank), so that a stalled peer cannot hang the finalization. If that barrier times out, if the
//! communicator was already broken, or if the dropping thread is panicking, it prints the reason and calls
//! `MPI_Abort`, which makes `mpirun` tear down every rank of the job; the job then exits with
//! [`ABORT_EXIT_CODE`]. MPI asks that the communicator be dropped on the thread that created it (the thread that
//! initialized MPI finalizes it).
//!
//! # Results and their order
//!
//! MPI does not specify the order in which `MPI_Allreduce` and `MPI_Reduce_scatter` add the ranks'
//! contributions, so results may differ in the last bits from the `threads` backend's rank-order sums for three
//! or more ranks (two-rank sums are exact either way: IEEE addition is commutative). Within one run every rank
//! gets bit-identical results: OpenMPI's and MPICH's reduction algorithms either reduce each element once and
//! distribute it (ring, reduce-scatter + all-gather) or combine the same partial results pairwise on every rank
//! (recursive doubling), and IEEE addition and maximum are commutative. `Avg` is `Sum` followed by a multiply by
//! `1/W` in f32, as in the `threads` backend. `Max` over a NaN follows the MPI library (`f32::max` in the
//! `threads` backend ignores NaN).
//!
//! Variable-count reduce-scatter is `MPI_Ireduce_scatter` (counts per rank); equal counts use
//! `MPI_Ireduce_scatter_block`, for which libraries have better algorithms.
//!
//! # What MPI cannot check
//!
//! Local argument errors (counts that do not match the buffers, a root that is not a rank, more than
//! `i32::MAX` elements) are [`CommError::Size`] before anything is sent. Buffer lengths or collectives that
//! differ between ranks cannot be seen without an extra exchange; MPI's default error handler aborts the job on
//! the truncation this causes, or the ranks time out — again never a hang.

use crate::{check_counts, CommError, Communicator, Op, ReduceOp};
use ::mpi::collective::SystemOperation;
use ::mpi::datatype::Equivalence;
use ::mpi::environment::Universe;
use ::mpi::ffi;
use ::mpi::raw::AsRaw;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::Communicator as _;
use ::mpi::Threading;
use std::ffi::{c_int, c_void};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The environment variable DeepSpeed reads its process-group timeout from, in whole minutes
/// (`deepspeed.comm`'s `default_pg_timeout`, reference/deepspeed-semantics.md: "timeout 30 min, env
/// `DEEPSPEED_TIMEOUT` minutes").
pub const TIMEOUT_ENV: &str = "DEEPSPEED_TIMEOUT";

/// DeepSpeed's default process-group timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The exit code `MPI_Abort` gives the job when a communicator is dropped broken (`EX_SOFTWARE` in sysexits.h).
pub const ABORT_EXIT_CODE: i32 = 70;

/// Polling `MPI_Test` back-to-back this long after a collective starts: short collectives finish within it.
const SPIN_FOR: Duration = Duration::from_micros(500);
/// After spinning, yield the core between polls until this much time has passed, so a rank waiting for a slow
/// peer leaves the CPU to compute threads on a small machine. MPI libraries move a large message's fragments only
/// inside MPI calls, so sleeping between polls would throttle transfers; only waits longer than any transfer
/// this CPU trainer makes (seconds are gigabytes through shared memory) are taken to be a peer still computing.
const YIELD_UNTIL: Duration = Duration::from_secs(1);
/// A longer wait polls at this interval: at most 0.005% added latency past `YIELD_UNTIL`.
const LONG_WAIT_POLL: Duration = Duration::from_micros(50);

/// Why an [`MpiComm`] could not be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MpiInitError {
    /// MPI was initialized before in this process (by another `MpiComm`, possibly already dropped and finalized:
    /// MPI can be initialized once per process).
    AlreadyInitialized,
    /// The library cannot serve calls from more than one thread (the communicator is `Send + Sync`, so a
    /// training engine may use it from a communication thread).
    ThreadLevel { provided: String },
    /// `DEEPSPEED_TIMEOUT` is set but is not a whole number of minutes.
    Timeout { value: String },
}

impl fmt::Display for MpiInitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MpiInitError::AlreadyInitialized => {
                f.write_str("MPI was already initialized in this process; create one MpiComm per process")
            }
            MpiInitError::ThreadLevel { provided } => write!(
                f,
                "the MPI library provides thread level {provided}; MpiComm needs MPI_THREAD_SERIALIZED or higher"
            ),
            MpiInitError::Timeout { value } => {
                write!(f, "{TIMEOUT_ENV}={value:?} is not a whole number of minutes")
            }
        }
    }
}

impl std::error::Error for MpiInitError {}

/// The timeout named by `DEEPSPEED_TIMEOUT` (whole minutes), or [`DEFAULT_TIMEOUT`] when it is unset.
pub fn timeout_from_env() -> Result<Duration, MpiInitError> {
    match std::env::var(TIMEOUT_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_TIMEOUT),
        Err(std::env::VarError::NotUnicode(raw)) => {
            Err(MpiInitError::Timeout { value: raw.to_string_lossy().into_owned() })
        }
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(minutes) => Ok(Duration::from_secs(minutes.saturating_mul(60))),
            Err(_) => Err(MpiInitError::Timeout { value }),
        },
    }
}

/// Buffers an outstanding request reads or writes; MPI owns them until the request completes. Moving this
/// struct does not move the vectors' heap storage, which is what MPI holds pointers to. The float buffers are
/// reused from one collective to the next and only grow, so that steady-state collectives neither allocate nor
/// fault in fresh pages (fresh staging made large all-reduces several times slower than `MPI_Allreduce`).
#[derive(Default)]
struct Staging {
    send: Vec<f32>,
    recv: Vec<f32>,
    counts: Vec<c_int>,
    displs: Vec<c_int>,
}

/// Makes `buf` at least `n` long; what it holds past the data of the current collective is stale, never read.
fn grow(buf: &mut Vec<f32>, n: usize) {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
}

impl Staging {
    /// Copies `data` into `send`; returns where MPI reads it.
    fn send_from(&mut self, data: &[f32]) -> *const c_void {
        grow(&mut self.send, data.len());
        self.send[..data.len()].copy_from_slice(data);
        self.send.as_ptr().cast()
    }

    /// Room for `n` floats in `recv`; returns where MPI writes them.
    fn recv_room(&mut self, n: usize) -> *mut c_void {
        grow(&mut self.recv, n);
        self.recv.as_mut_ptr().cast()
    }

    /// Copies `data` into `recv`, for a buffer MPI both reads and writes (a broadcast).
    fn recv_from(&mut self, data: &[f32]) -> *mut c_void {
        grow(&mut self.recv, data.len());
        self.recv[..data.len()].copy_from_slice(data);
        self.recv.as_mut_ptr().cast()
    }
}

/// What collectives change; its lock is held for the whole of each collective.
#[derive(Default)]
struct State {
    /// Why the communicator can no longer be used (a collective timed out); `None` while healthy.
    broken: Option<String>,
    /// The buffers of the next collective.
    staging: Staging,
    /// Requests that timed out, with the buffers MPI may still touch; kept until the process aborts.
    abandoned: Vec<(ffi::MPI_Request, Staging)>,
}

/// The MPI world communicator of this process, with a timeout on every collective.
///
/// Collectives called from several threads at once run one after the other (a lock is held for each whole
/// collective); every rank must still issue them in the same order.
pub struct MpiComm {
    comm: ffi::MPI_Comm,
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Whether MPI serves concurrent calls (MPI_THREAD_MULTIPLE); otherwise only serialized ones.
    thread_multiple: bool,
    state: Mutex<State>,
    /// Finalizes MPI when dropped, after `MpiComm::drop` has run; must stay the last field.
    _universe: Universe,
}

// SAFETY: MPI is initialized with MPI_THREAD_SERIALIZED or higher (checked in `from_env`), so it may be called
// from any thread as long as calls do not overlap. Every MPI call made through an `MpiComm` happens while its
// `state` lock is held, except `MPI_Abort` under MPI_THREAD_MULTIPLE, where concurrent calls are allowed. The raw
// handles (`MPI_Comm`, `MPI_Request`) are identifiers that any thread may pass to MPI.
unsafe impl Send for MpiComm {}
// SAFETY: as for `Send`: shared use goes through the `state` lock.
unsafe impl Sync for MpiComm {}

impl MpiComm {
    /// Initializes MPI (once per process) and returns the world communicator, with the timeout from
    /// `DEEPSPEED_TIMEOUT` (minutes) or 30 minutes.
    pub fn from_env() -> Result<MpiComm, MpiInitError> {
        let timeout = timeout_from_env()?;
        let (universe, provided) =
            ::mpi::initialize_with_threading(Threading::Multiple).ok_or(MpiInitError::AlreadyInitialized)?;
        if !matches!(provided, Threading::Serialized | Threading::Multiple) {
            // Dropping the universe finalizes MPI, so the process does not leave it half set up.
            drop(universe);
            return Err(MpiInitError::ThreadLevel { provided: format!("{provided:?}") });
        }
        let world = SimpleCommunicator::world();
        let rank = usize::try_from(world.rank()).expect("MPI ranks are non-negative");
        let size = usize::try_from(world.size()).expect("MPI sizes are positive");
        Ok(MpiComm {
            comm: world.as_raw(),
            rank,
            world: size,
            timeout,
            thread_multiple: provided == Threading::Multiple,
            state: Mutex::new(State::default()),
            _universe: universe,
        })
    }

    /// The same communicator with `timeout` on every collective.
    pub fn with_timeout(mut self, timeout: Duration) -> MpiComm {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Ends the whole job at once: `mpirun` tears down every rank, which then exits with `code`. For a rank
    /// that fails on its own (a bad input, a failed write) and must not leave its peers waiting for the timeout.
    /// Under MPI_THREAD_SERIALIZED it first waits for a collective running on another thread (at most the
    /// timeout).
    pub fn abort(&self, code: i32) -> ! {
        let _serialized = (!self.thread_multiple).then(|| self.lock());
        // SAFETY: `comm` is MPI_COMM_WORLD of an initialized MPI; no other MPI call through this communicator
        // runs concurrently unless MPI allows it (MPI_THREAD_MULTIPLE).
        unsafe { ffi::MPI_Abort(self.comm, code) };
        std::process::abort()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a thread panicked during a collective; the state is still consistent (each
        // update is one field write), and a panicking owner aborts the job when the communicator is dropped.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn size_error(&self, op: Op, detail: String) -> CommError {
        CommError::Size { op, rank: self.rank, detail }
    }

    /// `n` as an MPI count, which is a C `int`.
    fn count(&self, op: Op, n: usize) -> Result<c_int, CommError> {
        c_int::try_from(n).map_err(|_| self.size_error(op, format!("{n} elements exceed MPI's count limit")))
    }

    /// Starts a non-blocking collective with `start` (which fills the staging buffers, starts the request and
    /// returns MPI's error code), and polls it until it completes or the timeout passes. On success returns the
    /// locked state, whose staging buffers hold the result.
    fn run(
        &self,
        op: Op,
        start: impl FnOnce(&mut Staging, *mut ffi::MPI_Request) -> c_int,
    ) -> Result<MutexGuard<'_, State>, CommError> {
        let mut state = self.lock();
        if let Some(cause) = &state.broken {
            return Err(CommError::Broken { op, rank: self.rank, cause: cause.clone() });
        }
        // SAFETY: reading an MPI constant.
        let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
        let code = start(&mut state.staging, &mut request);
        if code != 0 {
            return Err(self.fail(&mut state, op, format!("MPI returned error code {code} starting {op}")));
        }
        let started = Instant::now();
        // A timeout too long to represent (say `DEEPSPEED_TIMEOUT` of a billion minutes) means no deadline.
        let deadline = started.checked_add(self.timeout);
        loop {
            let mut done: c_int = 0;
            // SAFETY: `request` is an active request started above; its buffers live in `staging`.
            let code = unsafe { ffi::MPI_Test(&mut request, &mut done, ffi::RSMPI_STATUS_IGNORE) };
            if code != 0 {
                let staging = std::mem::take(&mut state.staging);
                state.abandoned.push((request, staging));
                return Err(self.fail(&mut state, op, format!("MPI returned error code {code} in {op}")));
            }
            if done != 0 {
                return Ok(state);
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                let staging = std::mem::take(&mut state.staging);
                state.abandoned.push((request, staging));
                state.broken = Some(format!(
                    "rank {} timed out in {op} after {:.1}s: a peer did not arrive (MPI cannot tell which)",
                    self.rank,
                    self.timeout.as_secs_f64()
                ));
                return Err(CommError::Timeout { op, rank: self.rank, missing: Vec::new(), waited: self.timeout });
            }
            let waited = now - started;
            if waited < SPIN_FOR {
                std::hint::spin_loop();
            } else if waited < YIELD_UNTIL {
                std::thread::yield_now();
            } else {
                std::thread::sleep(deadline.map_or(LONG_WAIT_POLL, |deadline| LONG_WAIT_POLL.min(deadline - now)));
            }
        }
    }

    /// Marks the communicator broken by an MPI error and returns the error to report.
    fn fail(&self, state: &mut State, op: Op, cause: String) -> CommError {
        state.broken = Some(cause.clone());
        CommError::Broken { op, rank: self.rank, cause }
    }

    fn scale_for_avg(&self, op: ReduceOp, out: &mut [f32]) {
        op.finish(out, self.world);
    }
}

/// MPI's datatype for `f32` (`MPI_FLOAT`).
fn float_type() -> ffi::MPI_Datatype {
    f32::equivalent_datatype().as_raw()
}

/// MPI's operation for `op`; `Avg` is a sum scaled afterwards.
fn mpi_op(op: ReduceOp) -> ffi::MPI_Op {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => SystemOperation::sum().as_raw(),
        ReduceOp::Max => SystemOperation::max().as_raw(),
    }
}

impl Drop for MpiComm {
    fn drop(&mut self) {
        let broken = self.state.get_mut().unwrap_or_else(|p| p.into_inner()).broken.clone();
        let cause = if std::thread::panicking() {
            Some(format!("rank {}: the thread that owned the communicator panicked", self.rank))
        } else if broken.is_some() {
            broken
        } else {
            // Every rank must reach this barrier before any finalizes: MPI_Finalize itself waits for all ranks,
            // without a timeout.
            self.barrier().err().map(|e| format!("leaving the communicator: {e}"))
        };
        if let Some(cause) = cause {
            eprintln!("rank {}: aborting the MPI job so that no rank waits forever: {cause}", self.rank);
            self.abort(ABORT_EXIT_CODE);
        }
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        let count = self.count(Op::AllReduce, buf.len())?;
        let state = self.run(Op::AllReduce, |s, request| {
            let send = s.send_from(buf);
            let recv = s.recv_room(buf.len());
            // SAFETY: `send` and `recv` hold `count` floats and stay alive until the request completes.
            unsafe { ffi::MPI_Iallreduce(send, recv, count, float_type(), mpi_op(op), self.comm, request) }
        })?;
        buf.copy_from_slice(&state.staging.recv[..buf.len()]);
        self.scale_for_avg(op, buf);
        Ok(())
    }

    fn reduce_scatter(
        &self,
        input: &[f32],
        counts: &[usize],
        output: &mut [f32],
        op: ReduceOp,
    ) -> Result<(), CommError> {
        check_counts(Op::ReduceScatter, self.rank, self.world, counts, input.len(), output.len())?;
        self.count(Op::ReduceScatter, input.len())?;
        let counts_c = counts.iter().map(|&n| self.count(Op::ReduceScatter, n)).collect::<Result<Vec<_>, _>>()?;
        let equal = counts.iter().all(|&n| n == counts[0]);
        let state = self.run(Op::ReduceScatter, |s, request| {
            let send = s.send_from(input);
            let recv = s.recv_room(output.len());
            s.counts = counts_c;
            // SAFETY: `send` holds Σ counts floats, `recv` this rank's count; `counts` has one entry per rank.
            // All stay alive until the request completes.
            unsafe {
                if equal {
                    ffi::MPI_Ireduce_scatter_block(
                        send,
                        recv,
                        s.counts[0],
                        float_type(),
                        mpi_op(op),
                        self.comm,
                        request,
                    )
                } else {
                    ffi::MPI_Ireduce_scatter(
                        send,
                        recv,
                        s.counts.as_ptr(),
                        float_type(),
                        mpi_op(op),
                        self.comm,
                        request,
                    )
                }
            }
        })?;
        output.copy_from_slice(&state.staging.recv[..output.len()]);
        self.scale_for_avg(op, output);
        Ok(())
    }

    fn all_gather(&self, input: &[f32], counts: &[usize], output: &mut [f32]) -> Result<(), CommError> {
        check_counts(Op::AllGather, self.rank, self.world, counts, output.len(), input.len())?;
        self.count(Op::AllGather, output.len())?;
        let counts_c = counts.iter().map(|&n| self.count(Op::AllGather, n)).collect::<Result<Vec<_>, _>>()?;
        // Cannot overflow: the total fits a C int, checked above.
        let displs: Vec<c_int> =
            counts_c.iter().scan(0, |offset, &n| Some(std::mem::replace(offset, *offset + n))).collect();
        let send_count = counts_c[self.rank];
        let state = self.run(Op::AllGather, |s, request| {
            let send = s.send_from(input);
            let recv = s.recv_room(output.len());
            s.counts = counts_c;
            s.displs = displs;
            // SAFETY: `send` holds this rank's count, `recv` Σ counts floats at offsets `displs`; all stay alive
            // until the request completes.
            unsafe {
                ffi::MPI_Iallgatherv(
                    send,
                    send_count,
                    float_type(),
                    recv,
                    s.counts.as_ptr(),
                    s.displs.as_ptr(),
                    float_type(),
                    self.comm,
                    request,
                )
            }
        })?;
        output.copy_from_slice(&state.staging.recv[..output.len()]);
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.world {
            return Err(self.size_error(Op::Broadcast, format!("root {root} is not a rank of {}", self.world)));
        }
        let count = self.count(Op::Broadcast, buf.len())?;
        let root_c = c_int::try_from(root).expect("root is below the world size, a C int");
        let state = self.run(Op::Broadcast, |s, request| {
            let data = s.recv_from(buf);
            // SAFETY: `data` holds `count` floats (the root's data on the root) and stays alive until the request
            // completes.
            unsafe { ffi::MPI_Ibcast(data, count, float_type(), root_c, self.comm, request) }
        })?;
        buf.copy_from_slice(&state.staging.recv[..buf.len()]);
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        // SAFETY: a barrier has no buffers.
        self.run(Op::Barrier, |_, request| unsafe { ffi::MPI_Ibarrier(self.comm, request) }).map(drop)
    }
}
