//! Matrix products through the `gemm` crate, and the linear layer (`y = x Wᵀ + b`) built on them.
//!
//! `gemm` takes arbitrary row and column strides, so transposed and strided operands (a head's slice of the
//! fused QKV buffer, one time step of a batch-first LSTM buffer) cost no copies. The views below check their
//! extents against the slice once, so the single `unsafe` call into `gemm` only ever sees in-bounds memory.
//! Which code computes a product (the `gemm` crate, or `skinny` / `few_rows` for the shapes it handles slowly) is
//! chosen in `gemm_dispatch`.

use crate::cast::{load, store, store_opt, Contents, Element};
use crate::gemm_dispatch::gemm_raw;
// Defined beside the paths that share them; public here, where users of `gemm` and the linear layer find them.
pub use crate::gemm_types::{Dst, Threads};

/// A read-only strided matrix: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// A writable strided matrix; see [`MatRef`].
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// Length a strided `rows x cols` matrix needs, or 0 when it is empty.
fn extent(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows x cols` matrix at the start of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A strided view; panics if it would reach past `data`.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Self {
        let need = extent(rows, cols, row_stride, col_stride);
        assert!(
            need <= data.len(),
            "matrix view {rows}x{cols} (strides {row_stride},{col_stride}) needs {need} elements, slice has {}",
            data.len()
        );
        MatRef { data, rows, cols, row_stride, col_stride }
    }

    /// The transpose, as a view of the same memory.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl<'a> MatMut<'a> {
    /// A dense row-major `rows x cols` matrix at the start of `data`.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A strided view; panics if it would reach past `data` or if its elements would overlap.
    pub fn strided(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Self {
        let need = extent(rows, cols, row_stride, col_stride);
        assert!(
            need <= data.len(),
            "matrix view {rows}x{cols} (strides {row_stride},{col_stride}) needs {need} elements, slice has {}",
            data.len()
        );
        let disjoint = rows <= 1 && col_stride >= 1
            || cols <= 1 && row_stride >= 1
            || row_stride >= cols * col_stride && col_stride >= 1
            || col_stride >= rows * row_stride && row_stride >= 1;
        assert!(
            disjoint || need == 0,
            "writable matrix view {rows}x{cols} with strides {row_stride},{col_stride} overlaps itself"
        );
        MatMut { data, rows, cols, row_stride, col_stride }
    }
}

/// `dst = lhs · rhs` ([`Dst::Overwrite`]) or `dst += lhs · rhs` ([`Dst::Accumulate`]), each scaled by `scale`.
pub fn gemm(dst: MatMut<'_>, lhs: MatRef<'_>, rhs: MatRef<'_>, scale: f32, mode: Dst, threads: Threads) {
    assert_eq!(
        lhs.cols, rhs.rows,
        "gemm inner dimensions differ: {}x{} · {}x{}",
        lhs.rows, lhs.cols, rhs.rows, rhs.cols
    );
    assert_eq!((dst.rows, dst.cols), (lhs.rows, rhs.cols), "gemm destination has the wrong shape");
    // SAFETY: every view was checked at construction to lie inside its slice, `dst` is a unique borrow whose
    // elements do not overlap, and the shapes agree (asserted above), so gemm reads and writes only in bounds.
    unsafe {
        gemm_raw(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.data.as_mut_ptr(),
            dst.row_stride,
            dst.col_stride,
            (lhs.data.as_ptr(), lhs.row_stride, lhs.col_stride),
            (rhs.data.as_ptr(), rhs.row_stride, rhs.col_stride),
            scale,
            mode,
            threads,
        )
    }
}

/// How a weight matrix of a layer mapping `C` inputs to `OC` outputs is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[OC, C]`, PyTorch `nn.Linear` (also the tied GPT head reading the `[V, C]` token embedding).
    OutIn,
    /// `[C, OC]`, Hugging Face GPT-2's `Conv1D` (`y = x W + b`).
    InOut,
}

/// The weight as the `C x OC` matrix that multiplies the input from the right.
fn weight_as_in_out(weight: &[f32], layout: WeightLayout, c: usize, oc: usize) -> MatRef<'_> {
    match layout {
        WeightLayout::InOut => MatRef::row_major(weight, c, oc),
        WeightLayout::OutIn => MatRef::row_major(weight, oc, c).t(),
    }
}

/// The fp32 kernel of [`linear_forward`].
#[allow(clippy::too_many_arguments)]
fn linear_forward_f32(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    layout: WeightLayout,
    n: usize,
    c: usize,
    oc: usize,
) {
    let out = &mut out[..n * oc];
    let mode = match bias {
        Some(bias) => {
            for row in out.chunks_exact_mut(oc) {
                row.copy_from_slice(&bias[..oc]);
            }
            Dst::Accumulate
        }
        None => Dst::Overwrite,
    };
    gemm(
        MatMut::row_major(out, n, oc),
        MatRef::row_major(inp, n, c),
        weight_as_in_out(weight, layout, c, oc),
        1.0,
        mode,
        Threads::Pool,
    );
}

/// The fp32 kernel of [`linear_backward`].
#[allow(clippy::too_many_arguments)]
fn linear_backward_f32(
    dinp: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    grads: Contents,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    layout: WeightLayout,
    n: usize,
    c: usize,
    oc: usize,
) {
    let dout_m = MatRef::row_major(dout, n, oc);
    if let Some(dinp) = dinp {
        // dinp[N, C] += dout[N, OC] · Wᵀ where W is the C x OC matrix of the forward.
        gemm(
            MatMut::row_major(dinp, n, c),
            dout_m,
            weight_as_in_out(weight, layout, c, oc).t(),
            1.0,
            Dst::Accumulate,
            Threads::Pool,
        );
    }
    let inp_m = MatRef::row_major(inp, n, c);
    match layout {
        // dW[OC, C] (+)= doutᵀ · inp
        WeightLayout::OutIn => {
            gemm(MatMut::row_major(dweight, oc, c), dout_m.t(), inp_m, 1.0, grads.into(), Threads::Pool)
        }
        // dW[C, OC] (+)= inpᵀ · dout
        WeightLayout::InOut => {
            gemm(MatMut::row_major(dweight, c, oc), inp_m.t(), dout_m, 1.0, grads.into(), Threads::Pool)
        }
    }
    if let Some(dbias) = dbias {
        grads.prepare(dbias);
        sum_rows_into(dbias, dout, n, oc);
    }
}

/// `acc[OC] += Σ_rows m[N, OC]`.
pub fn sum_rows_into(acc: &mut [f32], m: &[f32], n: usize, cols: usize) {
    let acc = &mut acc[..cols];
    for row in m[..n * cols].chunks_exact(cols) {
        for (a, &x) in acc.iter_mut().zip(row) {
            *a += x;
        }
    }
}

/// `out[N, OC] = inp[N, C] · W + bias` (overwrites `out`).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward<E: Element>(
    out: &mut [E],
    inp: &[E],
    weight: &[E],
    bias: Option<&[E]>,
    layout: WeightLayout,
    n: usize,
    c: usize,
    oc: usize,
) {
    let bias = bias.map(load);
    store(out, Contents::Overwrite, |out| {
        linear_forward_f32(out, &load(inp), &load(weight), bias.as_deref(), layout, n, c, oc)
    })
}

/// Backward of [`linear_forward`]; adds into `dinp` (the kernels' convention: every backward accumulates into
/// its input's gradient, so residual branches need no extra pass), and adds into or, with `grads` =
/// [`Contents::Overwrite`], overwrites `dweight` and `dbias`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<E: Element>(
    dinp: Option<&mut [E]>,
    dweight: &mut [E],
    dbias: Option<&mut [E]>,
    grads: Contents,
    dout: &[E],
    inp: &[E],
    weight: &[E],
    layout: WeightLayout,
    n: usize,
    c: usize,
    oc: usize,
) {
    let (dout, inp, weight) = (load(dout), load(inp), load(weight));
    store_opt(dinp, Contents::Accumulate, |dinp| {
        store(dweight, grads, |dweight| {
            store_opt(dbias, grads, |dbias| {
                linear_backward_f32(dinp, dweight, dbias, grads, &dout, &inp, &weight, layout, n, c, oc)
            })
        })
    })
}
