//! ZeRO stage 3's parameters (DeepSpeed's stage 3, PyTorch FSDP2): each rank keeps the fp32 master weights of
//! its share of every parameter group ([`crate::zero`]) and nothing else of the model, except the groups small
//! enough to stay whole on every rank (`stage3_param_persistence_threshold`, as DeepSpeed's persistent
//! parameters). A forward or backward runs with a [`Gatherer`]: before a layer runs, its group is all-gathered
//! (on the communication thread, the next groups of the trace prefetched while the current one computes); after
//! it, the group is released unless it is read again soon (`stage3_max_reuse_distance`) and the live total allows
//! (`stage3_max_live_parameters`). In a backward each group's gradients go to a buffer of their own, which is
//! reduce-scattered into the rank's fp32 gradient partition as soon as the group's last writer finished, then
//! dropped: no buffer of the whole model's parameters or gradients exists.

use crate::error::EngineError;
use crate::reduce::{accumulate, reduce_piece, Share, Spread};
use crate::zero::{Shard, ZeroPlan};
use rustspeed_comm::background::{Background, Handle};
use rustspeed_comm::{CommError, Communicator};
use rustspeed_config::ZeroConfig;
use rustspeed_kernels::cast::{cast_from_f32, cast_to_f32, Element};
use rustspeed_nn::{Model, ParamSource, Pass, Window, WindowMut};
use std::collections::VecDeque;
use std::ops::Range;

/// What stage 3 keeps resident, from `zero_optimization` (in elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `stage3_prefetch_bucket_size`: elements of the groups ahead in the trace gathered while one computes.
    pub prefetch: usize,
    /// `stage3_max_live_parameters`: gathered elements resident at once, beyond which nothing is prefetched or
    /// kept for reuse (the group a layer needs is gathered whatever its size).
    pub max_live: usize,
    /// `stage3_max_reuse_distance`: a released group read again within this many elements of other groups'
    /// parameters is kept instead.
    pub max_reuse: usize,
    /// `stage3_param_persistence_threshold`: groups smaller than this stay whole on every rank...
    pub persistence: usize,
    /// ...while the persistent groups' total stays within `stage3_model_persistence_threshold`.
    pub model_persistence: usize,
}

impl Limits {
    pub fn of(config: &ZeroConfig) -> Self {
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Limits {
            prefetch: n(config.stage3_prefetch_bucket_size),
            max_live: n(config.stage3_max_live_parameters),
            max_reuse: n(config.stage3_max_reuse_distance),
            persistence: n(config.stage3_param_persistence_threshold),
            model_persistence: n(config.stage3_model_persistence_threshold),
        }
    }
}

/// A rank's stage-3 model state.
pub(crate) struct ShardedParams<E> {
    /// fp32 master weights of the partition (the parameters themselves in fp32 training); padding holds 0.
    pub master: Vec<f32>,
    /// Per group: its whole model copy when it persists on every rank (refreshed after each applied step).
    pub persistent: Vec<Option<Vec<E>>>,
    pub limits: Limits,
}

impl<E: Element> ShardedParams<E> {
    /// This rank's state from the whole model (`params`, fp32, the same on every rank): the masters of its
    /// shares, taken from the storage-type copy (16-bit runs round first, as DeepSpeed's `module.half()`), and
    /// the persistent groups whole.
    pub fn new(zero: &ZeroPlan, params: &[f32], limits: Limits) -> Self {
        let mut master = vec![0.0; zero.partition];
        let rounded = |values: &[f32]| {
            let mut copy = vec![E::default(); values.len()];
            cast_from_f32(&mut copy, values);
            copy
        };
        for segment in zero.segments() {
            let copy = rounded(&params[segment.layout.clone()]);
            cast_to_f32(&mut master[segment.at..segment.at + copy.len()], &copy);
        }
        let mut budget = limits.model_persistence;
        let persistent = zero
            .shards
            .iter()
            .map(|shard| {
                let n = shard.span.len();
                (n < limits.persistence && n <= budget).then(|| {
                    budget -= n;
                    rounded(&params[shard.span.clone()])
                })
            })
            .collect();
        ShardedParams { master, persistent, limits }
    }

    /// Elements of the persistent groups' whole copies.
    pub fn persistent_len(&self) -> usize {
        self.persistent.iter().flatten().map(|p| p.len()).sum()
    }

    /// Brings every persistent group's whole copy up to date with the masters (after an applied step).
    pub fn refresh_persistent(&mut self, comm: &dyn Communicator, zero: &ZeroPlan) -> Result<(), CommError> {
        for (shard, copy) in zero.shards.iter().zip(self.persistent.iter_mut()) {
            if let Some(copy) = copy {
                *copy = gather_span(comm, shard, zero.world, share(&self.master, shard))?;
            }
        }
        Ok(())
    }

    /// The whole model as `E` (a collective: every rank gathers every group).
    pub fn gather_all(&self, comm: &dyn Communicator, zero: &ZeroPlan) -> Result<Vec<E>, CommError> {
        let mut all = Vec::with_capacity(zero.numel);
        for (shard, copy) in zero.shards.iter().zip(&self.persistent) {
            match copy {
                Some(copy) => all.extend_from_slice(copy),
                None => all.extend(gather_span::<E>(comm, shard, zero.world, self.share(shard))?),
            }
        }
        Ok(all)
    }

    fn share(&self, shard: &Shard) -> &[f32] {
        share(&self.master, shard)
    }
}

/// This rank's share of `shard` in its partition `master`.
fn share<'a>(master: &'a [f32], shard: &Shard) -> &'a [f32] {
    &master[shard.at..shard.at + shard.size]
}

/// `shard`'s whole span as `E`, from every rank's fp32 share `mine`: the shares travel as fp32 and are rounded
/// once on arrival, which gives the values of a 16-bit copy rounded from the masters.
pub(crate) fn gather_span<E: Element>(
    comm: &dyn Communicator,
    shard: &Shard,
    world: usize,
    mine: &[f32],
) -> Result<Vec<E>, CommError> {
    let n = shard.span.len();
    let mut padded = vec![0.0f32; shard.size * world];
    comm.all_gather(mine, &shard.counts(world), &mut padded)?;
    let mut out = vec![E::default(); n];
    cast_from_f32(&mut out, &padded[..n]);
    Ok(out)
}

/// The parameters a pass reads: stage 3's shards (each group gathered per use, or persistent), or the whole
/// model copy of stage 2, whose backward still gives each group's gradients a buffer of their own.
#[derive(Clone, Copy)]
pub(crate) enum Resident<'env, E> {
    Sharded(&'env ShardedParams<E>),
    Whole(&'env [E]),
}

/// Where one group's gathered parameters are during a pass.
enum Slot<E> {
    Released,
    InFlight(Handle<Vec<E>>),
    Resident(Vec<E>),
}

/// What a pass kept resident at most, in elements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Residency {
    /// Gathered parameters of non-persistent groups (in flight or resident).
    pub gathered: usize,
    /// Per-group gradient buffers (being written or being reduced).
    pub gradients: usize,
}

impl Residency {
    /// Keeps the larger of each count.
    pub fn note(&mut self, other: Residency) {
        self.gathered = self.gathered.max(other.gathered);
        self.gradients = self.gradients.max(other.gradients);
    }
}

/// Runs `pass` of `model` (its forward or backward, as `run` calls it) with a [`Gatherer`] over a communication
/// thread of its own; a backward adds its gradients into `partition`. Returns what `run` returned and what the
/// pass kept resident at most.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_pass<E: Element, T>(
    model: &mut Model<E>,
    comm: &dyn Communicator,
    zero: &ZeroPlan,
    params: Resident<'_, E>,
    pass: Pass,
    partition: Option<&mut [f32]>,
    bucket: usize,
    run: impl FnOnce(&mut Model<E>, &mut Gatherer<'_, '_, E>) -> Result<T, EngineError>,
) -> Result<(T, Residency), EngineError> {
    let (forward, backward) = model.group_trace();
    let trace = match pass {
        Pass::Forward => forward,
        Pass::Backward => backward,
    };
    std::thread::scope(|scope| {
        let background = Background::start(scope, comm);
        let groups = model.groups().to_vec();
        let mut gatherer = Gatherer::new(&background, zero, params, groups, trace, partition, bucket);
        let result = run(model, &mut gatherer);
        // Wait for everything in flight whether or not the pass failed, then report the pass's own error first.
        let finished = gatherer.finish();
        let value = result?;
        Ok((value, finished?))
    })
}

/// Gradient reductions in flight beyond which the backward waits for the oldest: bounds the gradient buffers
/// resident while the communication thread catches up.
const MAX_PENDING_REDUCTIONS: usize = 2;

/// One forward or backward of a stage-3 model: serves each group's parameters (and gradient buffer) to the
/// model as a [`ParamSource`], issuing every collective on the communication thread in trace order (the same
/// on every rank, since each decision depends only on sizes and limits).
pub(crate) struct Gatherer<'s, 'env, E: Element> {
    background: &'s Background<'env>,
    zero: &'s ZeroPlan,
    /// The model's parameter groups (spans of the layout).
    groups: Vec<Range<usize>>,
    params: Resident<'env, E>,
    trace: Vec<usize>,
    cursor: usize,
    slots: Vec<Slot<E>>,
    /// Elements of non-persistent groups gathered or in flight.
    live: usize,
    grads: Vec<Option<Vec<E>>>,
    grads_live: usize,
    /// The fp32 gradient partition the reductions add into (backward only), the bucket size, and the
    /// reductions in flight with the size of the buffer each holds.
    partition: Option<&'s mut [f32]>,
    bucket: usize,
    reductions: VecDeque<(Handle<Vec<Share>>, usize)>,
    pub peak: Residency,
}

/// `group`'s parameters: the whole model copy (stage 2), or the group's persistent or gathered copy (stage 3).
fn window<'a, E: Element>(
    params: Resident<'a, E>,
    slots: &'a [Slot<E>],
    groups: &[Range<usize>],
    group: usize,
) -> Window<'a, E> {
    let base = groups[group].start;
    match params {
        Resident::Whole(all) => Window::whole(all),
        Resident::Sharded(sharded) => match (&sharded.persistent[group], &slots[group]) {
            (Some(copy), _) | (None, Slot::Resident(copy)) => Window { base, data: copy },
            _ => unreachable!("group {group} read before it was gathered"),
        },
    }
}

impl<'s, 'env, E: Element> Gatherer<'s, 'env, E> {
    /// A gatherer for a pass that reads groups in `trace` order; a backward passes the gradient partition.
    pub fn new(
        background: &'s Background<'env>,
        zero: &'s ZeroPlan,
        params: Resident<'env, E>,
        groups: Vec<Range<usize>>,
        trace: Vec<usize>,
        partition: Option<&'s mut [f32]>,
        bucket: usize,
    ) -> Self {
        let count = groups.len();
        Gatherer {
            background,
            zero,
            groups,
            params,
            trace,
            cursor: 0,
            slots: (0..count).map(|_| Slot::Released).collect(),
            live: 0,
            grads: (0..count).map(|_| None).collect(),
            grads_live: 0,
            partition,
            bucket,
            reductions: VecDeque::new(),
            peak: Residency::default(),
        }
    }

    fn len(&self, group: usize) -> usize {
        self.groups[group].len()
    }

    /// The stage-3 parameters of a group gathered per use (not persistent), if it is one.
    fn gathered_per_use(&self, group: usize) -> Option<&'env ShardedParams<E>> {
        match self.params {
            Resident::Sharded(sharded) if sharded.persistent[group].is_none() => Some(sharded),
            _ => None,
        }
    }

    fn limits(&self) -> Limits {
        match self.params {
            Resident::Sharded(sharded) => sharded.limits,
            Resident::Whole(_) => unreachable!("a whole model copy gathers nothing"),
        }
    }

    fn note_peak(&mut self) {
        self.peak.gathered = self.peak.gathered.max(self.live);
        self.peak.gradients = self.peak.gradients.max(self.grads_live);
    }

    /// Queues the all-gather of stage-3 group `group` on the communication thread.
    fn submit_gather(&mut self, group: usize, sharded: &'env ShardedParams<E>) {
        let shard = self.zero.shards[group].clone();
        let world = self.zero.world;
        let mine = share(&sharded.master, &shard);
        self.slots[group] = Slot::InFlight(self.background.submit(move |c| gather_span(c, &shard, world, mine)));
        self.live += self.len(group);
        self.note_peak();
    }

    /// Gathers ahead along the trace after position `self.cursor`: the groups gathered or in flight ahead of
    /// their use stay within the prefetch bucket (each counted once), the live total within its limit.
    fn prefetch(&mut self) {
        let mut ahead = 0;
        let mut counted = vec![false; self.slots.len()];
        for k in self.cursor + 1..self.trace.len() {
            let g = self.trace[k];
            let Some(sharded) = self.gathered_per_use(g) else { continue };
            if std::mem::replace(&mut counted[g], true) {
                continue;
            }
            let n = self.len(g);
            if !matches!(self.slots[g], Slot::Released) {
                ahead += n;
                continue;
            }
            if ahead + n > sharded.limits.prefetch || self.live + n > sharded.limits.max_live {
                break;
            }
            ahead += n;
            self.submit_gather(g, sharded);
        }
    }

    /// Releases groups kept for reuse until `group` fits under `stage3_max_live_parameters` (or none is left):
    /// a layer's own group is gathered whatever the limit, and nothing else may push the total past it.
    fn evict_for(&mut self, group: usize) {
        let n = self.len(group);
        for g in 0..self.slots.len() {
            if self.live + n <= self.limits().max_live {
                break;
            }
            if g != group && matches!(self.slots[g], Slot::Resident(_)) {
                self.slots[g] = Slot::Released;
                self.live -= self.len(g);
            }
        }
    }

    /// Elements of other groups read between now and `group`'s next use in the trace, if it has one.
    fn reuse_distance(&self, group: usize) -> Option<usize> {
        let next = self.trace[self.cursor..].iter().position(|&g| g == group)?;
        Some(self.trace[self.cursor..self.cursor + next].iter().map(|&g| self.len(g)).sum())
    }

    /// Waits for every reduction in flight beyond `keep` and adds its shares into the partition.
    fn drain_reductions(&mut self, keep: usize) -> Result<(), EngineError> {
        while self.reductions.len() > keep {
            let (handle, n) = self.reductions.pop_front().expect("a reduction in flight");
            let shares = handle.wait()?;
            self.grads_live -= n;
            let partition = self.partition.as_deref_mut().expect("reductions run in a backward");
            accumulate(partition, shares);
        }
        Ok(())
    }

    /// Ends the pass: waits for everything in flight (all of it, also after an error, so that nothing is left
    /// running) and adds the last reductions into the partition; the first error is the one reported.
    pub fn finish(mut self) -> Result<Residency, EngineError> {
        let mut first_error = None;
        for slot in std::mem::take(&mut self.slots) {
            if let Slot::InFlight(handle) = slot {
                if let Err(e) = handle.wait() {
                    first_error.get_or_insert(EngineError::from(e));
                }
            }
        }
        while !self.reductions.is_empty() {
            if let Err(e) = self.drain_reductions(self.reductions.len() - 1) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(self.peak),
        }
    }
}

impl<E: Element> ParamSource<E> for Gatherer<'_, '_, E> {
    type Error = EngineError;

    fn before(&mut self, group: usize, _pass: Pass) -> Result<(), EngineError> {
        debug_assert_eq!(self.trace.get(self.cursor), Some(&group), "the model left its group trace");
        if let Some(sharded) = self.gathered_per_use(group) {
            if matches!(self.slots[group], Slot::Released) {
                self.evict_for(group);
                self.submit_gather(group, sharded);
            }
            if matches!(self.slots[group], Slot::InFlight(_)) {
                // Prefetch first, so that the next groups travel while this one is awaited and computed.
                self.prefetch();
                let Slot::InFlight(handle) = std::mem::replace(&mut self.slots[group], Slot::Released) else {
                    unreachable!("matched above")
                };
                self.slots[group] = Slot::Resident(handle.wait()?);
            }
        }
        self.cursor += 1;
        Ok(())
    }

    fn params(&self, group: usize) -> Window<'_, E> {
        window(self.params, &self.slots, &self.groups, group)
    }

    fn params_and_grads(&mut self, group: usize) -> (Window<'_, E>, WindowMut<'_, E>) {
        let base = self.groups[group].start;
        if self.grads[group].is_none() {
            // Written before read: the group's first writer in the backward overwrites it.
            self.grads[group] = Some(vec![E::default(); self.len(group)]);
            self.grads_live += self.len(group);
            self.note_peak();
        }
        let params = window(self.params, &self.slots, &self.groups, group);
        let grads = self.grads[group].as_mut().expect("allocated above");
        (params, WindowMut { base, data: grads })
    }

    fn after(&mut self, group: usize, _pass: Pass, grads_final: bool) -> Result<(), EngineError> {
        if let Some(sharded) = self.gathered_per_use(group) {
            let keep = self.reuse_distance(group).is_some_and(|d| d <= sharded.limits.max_reuse)
                && self.live <= sharded.limits.max_live;
            if !keep {
                self.slots[group] = Slot::Released;
                self.live -= self.len(group);
            }
        }
        if grads_final {
            let mut grads = self.grads[group].take().expect("a final group was written");
            // Stage 3 shards each group on its own; stage 2's group is a piece of the one contiguous partition.
            // Either way the shares beyond the group's end (padding) receive nothing and stay zero.
            let shard = match self.params {
                Resident::Sharded(_) => self.zero.shards[group].clone(),
                Resident::Whole(_) => self.zero.shards[0].clone(),
            };
            let (rank, world, bucket, offset) =
                (self.zero.rank, self.zero.world, self.bucket, self.groups[group].start);
            let held = grads.len();
            let handle = self.background.submit(move |c| {
                let spread = Spread::Sharded { shard: &shard, rank, world };
                reduce_piece(c, spread, bucket, offset, &mut grads)
            });
            self.reductions.push_back((handle, held));
            self.drain_reductions(MAX_PENDING_REDUCTIONS)?;
        }
        Ok(())
    }
}
