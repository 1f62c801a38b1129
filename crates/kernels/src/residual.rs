//! Residual connection: `out = a + b`.

/// `out = a + b` (overwrites `out`).
pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// `da += dout; db += dout`.
pub fn residual_backward(da: &mut [f32], db: &mut [f32], dout: &[f32]) {
    for ((x, y), &g) in da.iter_mut().zip(db.iter_mut()).zip(dout) {
        *x += g;
        *y += g;
    }
}
