//! Gradient checking by central finite differences in float64.
//!
//! `∂f/∂x_i ≈ (f(x + ε e_i) - f(x - ε e_i)) / 2ε`, with truncation error `O(ε²)`. Any layer or kernel proves its
//! backward by comparing its analytic gradient with [`numeric_gradient`] through [`compare`].

/// Central-difference gradient of `f` at `x`, one coordinate at a time (`2 · len(x)` evaluations).
pub fn numeric_gradient(mut f: impl FnMut(&[f64]) -> f64, x: &[f64], eps: f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = probe[i];
            probe[i] = orig + eps;
            let plus = f(&probe);
            probe[i] = orig - eps;
            let minus = f(&probe);
            probe[i] = orig;
            (plus - minus) / (2.0 * eps)
        })
        .collect()
}

/// The worst disagreement found by [`compare`].
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub index: usize,
    pub expected: f64,
    pub actual: f64,
    /// `|actual - expected| / (atol + rtol · |expected|)`; above 1 fails.
    pub ratio: f64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "element {}: expected {:.9e}, got {:.9e} ({:.2}x the tolerance)",
            self.index, self.expected, self.actual, self.ratio
        )
    }
}

/// Checks `|actual_i - expected_i| <= atol + rtol · |expected_i|` for every `i`. Returns the worst element as
/// the error (or the first non-finite one, or a length mismatch as index `usize::MAX`).
pub fn compare(actual: &[f64], expected: &[f64], atol: f64, rtol: f64) -> Result<(), Mismatch> {
    if actual.len() != expected.len() {
        return Err(Mismatch {
            index: usize::MAX,
            expected: expected.len() as f64,
            actual: actual.len() as f64,
            ratio: f64::INFINITY,
        });
    }
    let mut worst: Option<Mismatch> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let ratio =
            if a.is_finite() && e.is_finite() { (a - e).abs() / (atol + rtol * e.abs()) } else { f64::INFINITY };
        if ratio > 1.0 && worst.as_ref().is_none_or(|w| ratio > w.ratio) {
            worst = Some(Mismatch { index: i, expected: e, actual: a, ratio });
        }
    }
    worst.map_or(Ok(()), Err)
}

/// Widens an fp32 slice for comparison against float64 references.
pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
