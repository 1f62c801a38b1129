//! Residual connection: `out = a + b`.

use crate::cast::{load, store, Contents, Element};

/// The fp32 kernel of [`residual_forward`].
fn residual_forward_f32(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// The fp32 kernel of [`residual_backward`].
fn residual_backward_f32(da: &mut [f32], db: &mut [f32], dout: &[f32]) {
    for ((x, y), &g) in da.iter_mut().zip(db.iter_mut()).zip(dout) {
        *x += g;
        *y += g;
    }
}

/// `out = a + b` (overwrites `out`).
pub fn residual_forward<E: Element>(out: &mut [E], a: &[E], b: &[E]) {
    store(out, Contents::Overwrite, |out| residual_forward_f32(out, &load(a), &load(b)))
}

/// `da += dout; db += dout`.
pub fn residual_backward<E: Element>(da: &mut [E], db: &mut [E], dout: &[E]) {
    let dout = load(dout);
    store(da, Contents::Accumulate, |da| store(db, Contents::Accumulate, |db| residual_backward_f32(da, db, &dout)))
}
