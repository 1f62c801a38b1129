//! Parameter specs and the flat layout: every parameter of a model lives in one flat buffer, at an offset the
//! [`ParamLayout`] records under its PyTorch / Hugging Face state-dict name; gradients use a second buffer with
//! the same layout.

use rustspeed_kernels::rng::Rng;
use std::collections::HashMap;
use std::ops::Range;

/// How a parameter is initialized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with mean 0 and this standard deviation.
    Normal {
        std: f32,
    },
    /// Uniform on `[-bound, bound)`.
    Uniform {
        bound: f32,
    },
}

/// A parameter a layer declares.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// State-dict name, e.g. `transformer.h.0.attn.c_attn.weight` or `lstm.weight_ih_l0`.
    pub name: String,
    /// Shape as in the state dict (row-major).
    pub shape: Vec<usize>,
    pub init: Init,
    /// Whether decoupled weight decay applies; by default tensors of rank >= 2 (weights, embeddings), not
    /// biases or norm gains.
    pub weight_decay: bool,
}

impl ParamSpec {
    /// A spec with the default weight-decay rule (rank >= 2).
    pub fn new(name: impl Into<String>, shape: &[usize], init: Init) -> Self {
        ParamSpec { name: name.into(), shape: shape.to_vec(), init, weight_decay: shape.len() >= 2 }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Index of a parameter in its [`ParamLayout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

/// A parameter placed in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    pub spec: ParamSpec,
    pub offset: usize,
}

impl ParamEntry {
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.spec.numel()
    }
}

/// Where each parameter lives in the flat buffer, in declaration order, packed without gaps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamLayout {
    entries: Vec<ParamEntry>,
    numel: usize,
    by_name: HashMap<String, ParamId>,
}

impl ParamLayout {
    /// Places `spec` after the parameters already placed. Panics on a duplicate name (a model-definition bug).
    pub fn push(&mut self, spec: ParamSpec) -> ParamId {
        let id = ParamId(self.entries.len());
        let previous = self.by_name.insert(spec.name.clone(), id);
        assert!(previous.is_none(), "parameter {} declared twice", spec.name);
        let numel = spec.numel();
        self.entries.push(ParamEntry { spec, offset: self.numel });
        self.numel += numel;
        id
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.numel
    }

    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    pub fn entry(&self, id: ParamId) -> &ParamEntry {
        &self.entries[id.0]
    }

    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }

    pub fn range(&self, id: ParamId) -> Range<usize> {
        self.entries[id.0].range()
    }

    /// Parameter `id` of `buf`: the whole flat buffer, or a [`Window`] of it that holds `id` (a window that does
    /// not is a bug of the caller, and panics).
    pub fn view<'a, T: 'a>(&self, buf: impl Flat<'a, T>, id: ParamId) -> &'a [T] {
        let (base, data) = buf.flat();
        let r = self.range(id);
        &data[r.start - base..r.end - base]
    }

    pub fn view_mut<'a, T: 'a>(&self, buf: impl FlatMut<'a, T>, id: ParamId) -> &'a mut [T] {
        let (base, data) = buf.flat_mut();
        let r = self.range(id);
        &mut data[r.start - base..r.end - base]
    }

    /// Disjoint mutable views of several parameters at once; `ids` must be distinct and in layout order (a
    /// layer passes the ids it declared, in declaration order).
    pub fn views_mut<'a, T: 'a, const K: usize>(
        &self,
        buf: impl FlatMut<'a, T>,
        ids: [ParamId; K],
    ) -> [&'a mut [T]; K] {
        let views = self.spans_mut(buf, &ids.map(|id| (id, id)));
        views.try_into().unwrap_or_else(|_| unreachable!("one view per id"))
    }

    /// Parameters `first..=last`, one contiguous range since the layout packs them in declaration order: the
    /// weights of one fused product declared as separate tensors (Llama's q, k and v projections).
    pub fn span(&self, first: ParamId, last: ParamId) -> Range<usize> {
        assert!(first.0 <= last.0, "span: parameters out of order");
        self.range(first).start..self.range(last).end
    }

    /// The [`ParamLayout::span`] of `first..=last` in `buf`.
    pub fn span_view<'a, T: 'a>(&self, buf: impl Flat<'a, T>, first: ParamId, last: ParamId) -> &'a [T] {
        let (base, data) = buf.flat();
        let r = self.span(first, last);
        &data[r.start - base..r.end - base]
    }

    /// Disjoint mutable views of several spans `(first, last)` at once; they must be in layout order and must
    /// not overlap.
    pub fn spans_mut<'a, T: 'a>(&self, buf: impl FlatMut<'a, T>, spans: &[(ParamId, ParamId)]) -> Vec<&'a mut [T]> {
        let (base, buf) = buf.flat_mut();
        let mut rest: &'a mut [T] = buf;
        let mut pos = base;
        spans
            .iter()
            .map(|&(first, last)| {
                let range = self.span(first, last);
                assert!(range.start >= pos, "views_mut: parameters must be distinct and in layout order");
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - pos);
                let (view, tail) = tail.split_at_mut(range.len());
                rest = tail;
                pos = range.end;
                view
            })
            .collect()
    }

    /// A fresh parameter buffer initialized from each spec's [`Init`], reproducible from `seed`: parameters are
    /// drawn in layout order from one generator.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut buf = vec![0.0f32; self.numel];
        for entry in &self.entries {
            let dst = &mut buf[entry.range()];
            match entry.spec.init {
                Init::Zeros => dst.fill(0.0),
                Init::Ones => dst.fill(1.0),
                Init::Normal { std } => dst.iter_mut().for_each(|x| *x = (rng.normal() * std as f64) as f32),
                Init::Uniform { bound } => {
                    let b = bound as f64;
                    dst.iter_mut().for_each(|x| *x = rng.uniform_in(-b, b) as f32)
                }
            }
        }
        buf
    }
}

/// The elements `[base, base + data.len())` of a flat buffer over a [`ParamLayout`]: what a layer reads when only
/// its own parameter group is resident (ZeRO stage 3 gathers one group at a time), or the whole buffer (`base` 0).
#[derive(Clone, Copy, Debug)]
pub struct Window<'a, T> {
    pub base: usize,
    pub data: &'a [T],
}

/// The mutable form of [`Window`]: a layer's gradients, in the whole buffer or in its group's own buffer.
#[derive(Debug)]
pub struct WindowMut<'a, T> {
    pub base: usize,
    pub data: &'a mut [T],
}

impl<'a, T> Window<'a, T> {
    /// The whole flat buffer.
    pub fn whole(data: &'a [T]) -> Self {
        Window { base: 0, data }
    }
}

impl<'a, T> WindowMut<'a, T> {
    /// The whole flat buffer.
    pub fn whole(data: &'a mut [T]) -> Self {
        WindowMut { base: 0, data }
    }
}

/// Something [`ParamLayout::view`] reads parameters from: `(base, elements)` of a flat buffer.
pub trait Flat<'a, T> {
    fn flat(self) -> (usize, &'a [T]);
}

/// Something [`ParamLayout::view_mut`] writes parameters into.
pub trait FlatMut<'a, T> {
    fn flat_mut(self) -> (usize, &'a mut [T]);
}

impl<'a, T> Flat<'a, T> for &'a [T] {
    fn flat(self) -> (usize, &'a [T]) {
        (0, self)
    }
}

impl<'a, T> Flat<'a, T> for &'a Vec<T> {
    fn flat(self) -> (usize, &'a [T]) {
        (0, self)
    }
}

impl<'a, T> Flat<'a, T> for Window<'a, T> {
    fn flat(self) -> (usize, &'a [T]) {
        (self.base, self.data)
    }
}

impl<'a, 'b: 'a, T> Flat<'a, T> for &'a Window<'b, T> {
    fn flat(self) -> (usize, &'a [T]) {
        (self.base, self.data)
    }
}

impl<'a, T> FlatMut<'a, T> for &'a mut [T] {
    fn flat_mut(self) -> (usize, &'a mut [T]) {
        (0, self)
    }
}

impl<'a, T> FlatMut<'a, T> for &'a mut Vec<T> {
    fn flat_mut(self) -> (usize, &'a mut [T]) {
        (0, self)
    }
}

impl<'a, 'b: 'a, T> FlatMut<'a, T> for &'a mut WindowMut<'b, T> {
    fn flat_mut(self) -> (usize, &'a mut [T]) {
        (self.base, &mut *self.data)
    }
}
