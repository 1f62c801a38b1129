//! Ranks as threads of one process: collectives through shared memory.
//!
//! Each collective is one rendezvous: every rank posts a copy of its contribution into the slot of the current
//! generation and waits until all have posted; the last to arrive advances the generation and wakes the others;
//! each then computes its own result from all contributions, in rank order. Slots alternate between two
//! generations, so a fast rank posting the next contribution never overwrites one a slow rank is still reading
//! (it cannot get two generations ahead: the next rendezvous waits for the slow rank).
//!
//! Failure: a wait longer than the timeout marks the group broken and reports the ranks that did not arrive;
//! every rank still waiting, and every later collective, then fails at once instead of waiting. A rank whose
//! communicator is dropped (its thread returned or panicked) breaks the group the same way.

use crate::{check_counts, CommError, Communicator, Op, ReduceOp};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One rank's posted contribution.
struct Posted {
    op: Op,
    data: Arc<Vec<f32>>,
}

struct State {
    generation: u64,
    arrived: Vec<bool>,
    count: usize,
    /// Contributions by generation parity, then rank.
    slots: [Vec<Option<Posted>>; 2],
    broken: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    world: usize,
}

/// Random delays before collectives, for tests that shake out ordering assumptions.
#[derive(Clone, Copy, Debug)]
struct Delay {
    max: Duration,
    state: u64,
}

/// A communicator of one rank of a [`ThreadGroup`].
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
    timeout: Duration,
    delay: Mutex<Option<Delay>>,
}

/// Creates the communicators of a group of `world` ranks; hand one to each rank's thread.
pub struct ThreadGroup;

impl ThreadGroup {
    #[allow(clippy::new_ret_no_self)]
    pub fn new(world: usize, timeout: Duration) -> Vec<ThreadComm> {
        assert!(world > 0, "a group needs at least one rank");
        let state = State {
            generation: 0,
            arrived: vec![false; world],
            count: 0,
            slots: [(0..world).map(|_| None).collect(), (0..world).map(|_| None).collect()],
            broken: None,
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), wake: Condvar::new(), world });
        (0..world)
            .map(|rank| ThreadComm { rank, shared: Arc::clone(&shared), timeout, delay: Mutex::new(None) })
            .collect()
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A poisoned lock means a rank panicked while holding it; the state itself stays consistent (every update
    // is a few field writes), and the dropped communicator marks the group broken.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

impl ThreadComm {
    /// Sleeps a random time below `max` before every collective (seeded per rank), to test that nothing depends
    /// on ranks arriving together.
    pub fn inject_delays(&self, max: Duration, seed: u64) {
        let state = seed ^ (self.rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        *self.delay.lock().unwrap_or_else(|p| p.into_inner()) = Some(Delay { max, state: state | 1 });
    }

    fn maybe_sleep(&self) {
        let mut guard = self.delay.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = guard.as_mut() {
            // xorshift64
            d.state ^= d.state << 13;
            d.state ^= d.state >> 7;
            d.state ^= d.state << 17;
            let frac = (d.state >> 11) as f64 / (1u64 << 53) as f64;
            let sleep = d.max.mul_f64(frac);
            drop(guard);
            std::thread::sleep(sleep);
        }
    }

    /// Posts `data` and returns every rank's contribution to this collective, in rank order.
    fn exchange(&self, op: Op, data: Vec<f32>) -> Result<Vec<Arc<Vec<f32>>>, CommError> {
        self.maybe_sleep();
        let shared = &*self.shared;
        let mut s = lock(shared);
        if let Some(cause) = &s.broken {
            return Err(CommError::Broken { op, rank: self.rank, cause: cause.clone() });
        }
        let generation = s.generation;
        let parity = (generation % 2) as usize;
        s.slots[parity][self.rank] = Some(Posted { op, data: Arc::new(data) });
        s.arrived[self.rank] = true;
        s.count += 1;
        if s.count == shared.world {
            s.count = 0;
            s.arrived.iter_mut().for_each(|a| *a = false);
            s.generation += 1;
            shared.wake.notify_all();
        } else {
            let deadline = Instant::now() + self.timeout;
            while s.generation == generation && s.broken.is_none() {
                let now = Instant::now();
                if now >= deadline {
                    let missing: Vec<usize> = (0..shared.world).filter(|&r| !s.arrived[r]).collect();
                    s.broken = Some(format!("rank {} timed out in {op} waiting for rank(s) {missing:?}", self.rank));
                    shared.wake.notify_all();
                    return Err(CommError::Timeout { op, rank: self.rank, missing, waited: self.timeout });
                }
                s = shared.wake.wait_timeout(s, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
            }
            if s.generation == generation {
                let cause = s.broken.clone().unwrap_or_default();
                return Err(CommError::Broken { op, rank: self.rank, cause });
            }
        }
        let posted: Vec<&Posted> = s.slots[parity].iter().map(|p| p.as_ref().expect("every rank posted")).collect();
        if let Some(other) = posted.iter().position(|p| p.op != op) {
            let cause = format!("rank {} called {op} while rank {other} called {}", self.rank, posted[other].op);
            s.broken = Some(cause.clone());
            shared.wake.notify_all();
            return Err(CommError::Broken { op, rank: self.rank, cause });
        }
        Ok(posted.iter().map(|p| Arc::clone(&p.data)).collect())
    }

    fn size_error(&self, op: Op, detail: String) -> CommError {
        CommError::Size { op, rank: self.rank, detail }
    }
}

impl Drop for ThreadComm {
    fn drop(&mut self) {
        let mut s = lock(&self.shared);
        if s.broken.is_none() {
            s.broken = Some(format!("rank {} left the group", self.rank));
        }
        self.shared.wake.notify_all();
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<(), CommError> {
        let all = self.exchange(Op::AllReduce, buf.to_vec())?;
        if let Some(r) = all.iter().position(|x| x.len() != buf.len()) {
            return Err(self.size_error(
                Op::AllReduce,
                format!("rank {r} has {} elements, this rank {}", all[r].len(), buf.len()),
            ));
        }
        for (i, out) in buf.iter_mut().enumerate() {
            *out = all[1..].iter().fold(all[0][i], |acc, x| op.combine(acc, x[i]));
        }
        op.finish(buf, self.shared.world);
        Ok(())
    }

    fn reduce_scatter(
        &self,
        input: &[f32],
        counts: &[usize],
        output: &mut [f32],
        op: ReduceOp,
    ) -> Result<(), CommError> {
        check_counts(Op::ReduceScatter, self.rank, self.shared.world, counts, input.len(), output.len())?;
        let all = self.exchange(Op::ReduceScatter, input.to_vec())?;
        if let Some(r) = all.iter().position(|x| x.len() != input.len()) {
            return Err(self.size_error(
                Op::ReduceScatter,
                format!("rank {r} sent {} elements, this rank {}", all[r].len(), input.len()),
            ));
        }
        let offset: usize = counts[..self.rank].iter().sum();
        for (i, out) in output.iter_mut().enumerate() {
            *out = all[1..].iter().fold(all[0][offset + i], |acc, x| op.combine(acc, x[offset + i]));
        }
        op.finish(output, self.shared.world);
        Ok(())
    }

    fn all_gather(&self, input: &[f32], counts: &[usize], output: &mut [f32]) -> Result<(), CommError> {
        check_counts(Op::AllGather, self.rank, self.shared.world, counts, output.len(), input.len())?;
        let all = self.exchange(Op::AllGather, input.to_vec())?;
        let mut offset = 0;
        for (r, (piece, &count)) in all.iter().zip(counts).enumerate() {
            if piece.len() != count {
                return Err(self
                    .size_error(Op::AllGather, format!("rank {r} sent {} elements, counts say {count}", piece.len())));
            }
            output[offset..offset + count].copy_from_slice(piece);
            offset += count;
        }
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.shared.world {
            return Err(self.size_error(Op::Broadcast, format!("root {root} is not a rank of {}", self.shared.world)));
        }
        let mine = if self.rank == root { buf.to_vec() } else { Vec::new() };
        let all = self.exchange(Op::Broadcast, mine)?;
        if all[root].len() != buf.len() {
            return Err(self.size_error(
                Op::Broadcast,
                format!("root sent {} elements, this rank expects {}", all[root].len(), buf.len()),
            ));
        }
        buf.copy_from_slice(&all[root]);
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.exchange(Op::Barrier, Vec::new()).map(|_| ())
    }
}
