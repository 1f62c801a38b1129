//! Token embedding (`out[n] = W[token[n]]`) and learned position embedding (`out[b, t] += P[t]`).

use crate::cast::{load, store, Contents, Element};

/// The fp32 kernel of [`token_backward`].
fn token_backward_f32(dweight: &mut [f32], dout: &[f32], tokens: &[u32], c: usize) {
    for (row, &tok) in dout.chunks_exact(c).zip(tokens) {
        let tok = tok as usize;
        for (d, &g) in dweight[tok * c..(tok + 1) * c].iter_mut().zip(row) {
            *d += g;
        }
    }
}

/// The fp32 kernel of [`position_forward`].
fn position_forward_f32(out: &mut [f32], pos: &[f32], b: usize, t: usize, c: usize) {
    for seq in out[..b * t * c].chunks_exact_mut(t * c) {
        for (o, &p) in seq.iter_mut().zip(&pos[..t * c]) {
            *o += p;
        }
    }
}

/// The fp32 kernel of [`position_backward`].
fn position_backward_f32(dpos: &mut [f32], dout: &[f32], b: usize, t: usize, c: usize) {
    for seq in dout[..b * t * c].chunks_exact(t * c) {
        for (d, &g) in dpos[..t * c].iter_mut().zip(seq) {
            *d += g;
        }
    }
}

/// `out[N, C] = weight[tokens[n], :]` (overwrites). Panics if a token is outside the `[V, C]` table; callers
/// validate tokens first and report bad ones as errors.
pub fn token_forward<E: Element>(out: &mut [E], tokens: &[u32], weight: &[E], c: usize) {
    for (row, &tok) in out.chunks_exact_mut(c).zip(tokens) {
        let tok = tok as usize;
        row.copy_from_slice(&weight[tok * c..(tok + 1) * c]);
    }
}

/// `dweight[tokens[n], :] += dout[n, :]`; with `grads` = [`Contents::Overwrite`] the rest of the table is zeroed
/// (`dweight` holds nothing of value before). Sequential: repeated tokens would race, and the work is one pass
/// over `dout`.
pub fn token_backward<E: Element>(dweight: &mut [E], grads: Contents, dout: &[E], tokens: &[u32], c: usize) {
    store(dweight, grads, |dw| {
        grads.prepare(dw);
        token_backward_f32(dw, &load(dout), tokens, c)
    })
}

/// `out[b, t, :] += pos[t, :]` for `out` of shape `[B, T, C]` and `pos` of shape `[maxT, C]`, `T <= maxT`.
pub fn position_forward<E: Element>(out: &mut [E], pos: &[E], b: usize, t: usize, c: usize) {
    store(out, Contents::Accumulate, |o| position_forward_f32(o, &load(pos), b, t, c))
}

/// `dpos[t, :] += Σ_b dout[b, t, :]` over the first `T` rows of the `[maxT, C]` table; with `grads` =
/// [`Contents::Overwrite`] the whole table is written (rows from `T` on with zeros).
pub fn position_backward<E: Element>(dpos: &mut [E], grads: Contents, dout: &[E], b: usize, t: usize, c: usize) {
    store(dpos, grads, |d| {
        grads.prepare(d);
        position_backward_f32(d, &load(dout), b, t, c)
    })
}
