//! Exact Gaussian likelihood of a stationary ARMA process through the Kalman
//! filter on its state-space form, with the Chandrasekhar recursions
//! (O(r) per step instead of the Riccati equation's O(r²)).
//!
//! State-space form (Harvey's, as R's `makeARIMA`): with `r = max(p, q+1)`,
//! `α_{t+1} = T α_t + R ε_{t+1}`, `y_t = α_t[0]`, where `T` has `φ` in its
//! first column and ones on the superdiagonal, `R = (1, θ_1, …, θ_{r−1})'`,
//! and `Var ε = 1` (the innovation variance is concentrated out). The
//! filter starts from the stationary distribution (`a_1 = 0`, `P_1 = Σ`,
//! `Σ = TΣT' + RR'`), so the likelihood is exact.
//!
//! Several series are filtered at once with the same gains (the gains do
//! not depend on the data): the observations and each regressor column,
//! which is what GLS for regression with ARMA errors needs.
//!
//! Invariants: `φ` must be stationary (callers transform or check it);
//! [`filter`] returns `None` when the autocovariances cannot be computed or
//! a prediction variance is not positive.

/// ARMA autocovariances `γ(0..=lags)` and MA(∞) weights `ψ(0..=lags)` for
/// unit innovation variance. Solves the `(p+1)`-equation linear system for
/// `γ(0..=p)` (Gaussian elimination, partial pivoting), then recurses.
pub fn acov(phi: &[f64], theta: &[f64], lags: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    let p = phi.len();
    let q = theta.len();
    let th = |j: usize| -> f64 {
        if j == 0 {
            1.0
        } else if j <= q {
            theta[j - 1]
        } else {
            0.0
        }
    };
    let len = lags.max(p).max(q) + 1;
    let mut psi = vec![0.0; len];
    for k in 0..len {
        let mut v = th(k);
        for i in 1..=k.min(p) {
            v += phi[i - 1] * psi[k - i];
        }
        psi[k] = v;
    }
    let rhs = |k: usize| -> f64 { (k..=q).map(|j| th(j) * psi[j - k]).sum() };
    let mut gamma = vec![0.0; len];
    if p == 0 {
        for (k, g) in gamma.iter_mut().enumerate() {
            *g = rhs(k);
        }
    } else {
        let n = p + 1;
        let mut a = vec![0.0; n * n];
        let mut b: Vec<f64> = (0..n).map(rhs).collect();
        for k in 0..n {
            a[k * n + k] += 1.0;
            for i in 1..=p {
                let c = k.abs_diff(i);
                a[k * n + c] -= phi[i - 1];
            }
        }
        // Gaussian elimination with partial pivoting.
        for col in 0..n {
            let piv =
                (col..n).max_by(|&x, &y| a[x * n + col].abs().total_cmp(&a[y * n + col].abs()))?;
            if a[piv * n + col].abs() < 1e-300 || !a[piv * n + col].is_finite() {
                return None;
            }
            if piv != col {
                for j in 0..n {
                    a.swap(piv * n + j, col * n + j);
                }
                b.swap(piv, col);
            }
            let d = a[col * n + col];
            for row in col + 1..n {
                let f = a[row * n + col] / d;
                if f != 0.0 {
                    for j in col..n {
                        a[row * n + j] -= f * a[col * n + j];
                    }
                    b[row] -= f * b[col];
                }
            }
        }
        for row in (0..n).rev() {
            let s: f64 = (row + 1..n).map(|j| a[row * n + j] * b[j]).sum();
            b[row] = (b[row] - s) / a[row * n + row];
        }
        gamma[..n].copy_from_slice(&b);
        for k in n..len {
            let mut v = rhs(k);
            for i in 1..=p {
                v += phi[i - 1] * gamma[k - i];
            }
            gamma[k] = v;
        }
    }
    if gamma.iter().all(|v| v.is_finite()) && gamma[0] > 0.0 {
        Some((gamma, psi))
    } else {
        None
    }
}

/// First column of the stationary state covariance `Σ` (`r` values):
/// `Σ[0][0] = γ(0)`, `Σ[j][0] = Σ_{l=1}^{r−j} φ_{j+l} γ(l) + Σ_{l=0}^{r−1−j}
/// θ_{j+l} ψ(l)` (state element `j` is `Σ_{k>j} φ_k y_{t+j−k} + Σ_{k≥j}
/// θ_k ε_{t+j−k}`).
pub fn stationary_first_column(phi: &[f64], theta: &[f64]) -> Option<Vec<f64>> {
    let r = phi.len().max(theta.len() + 1);
    let (gamma, psi) = acov(phi, theta, r)?;
    let ph = |k: usize| {
        if k >= 1 && k <= phi.len() {
            phi[k - 1]
        } else {
            0.0
        }
    };
    let th = |k: usize| {
        if k >= 1 && k <= theta.len() {
            theta[k - 1]
        } else {
            0.0
        }
    };
    let mut col = vec![0.0; r];
    col[0] = gamma[0];
    for (j, c) in col.iter_mut().enumerate().skip(1) {
        *c = (1..=r - j).map(|l| ph(j + l) * gamma[l]).sum::<f64>()
            + (0..r - j).map(|l| th(j + l) * psi[l]).sum::<f64>();
    }
    Some(col)
}

/// The full stationary state covariance `Σ` (`r × r`, row-major), from its
/// first column by `Σ[i][j] = φ_{i+1}φ_{j+1}γ(0) + φ_{i+1}Σ[0][j+1] +
/// φ_{j+1}Σ[0][i+1] + Σ[i+1][j+1] + θ_iθ_j`. Used by the tests (the filter
/// needs only the first column).
#[cfg(test)]
pub fn stationary_cov(phi: &[f64], theta: &[f64]) -> Option<Vec<f64>> {
    let r = phi.len().max(theta.len() + 1);
    let c0 = stationary_first_column(phi, theta)?;
    let ph = |k: usize| {
        if k >= 1 && k <= phi.len() {
            phi[k - 1]
        } else {
            0.0
        }
    };
    let th = |k: usize| {
        if k >= 1 && k <= theta.len() {
            theta[k - 1]
        } else {
            0.0
        }
    };
    let row0 = |j: usize| if j < r { c0[j] } else { 0.0 };
    let mut s = vec![0.0; r * r];
    let g0 = c0[0];
    for i in (1..r).rev() {
        for j in i..r {
            let next = if i + 1 < r && j + 1 < r {
                s[(i + 1) * r + j + 1]
            } else {
                0.0
            };
            let v = ph(i + 1) * ph(j + 1) * g0
                + ph(i + 1) * row0(j + 1)
                + ph(j + 1) * row0(i + 1)
                + next
                + th(i) * th(j);
            s[i * r + j] = v;
            s[j * r + i] = v;
        }
    }
    for j in 0..r {
        s[j] = c0[j];
        s[j * r] = c0[j];
    }
    Some(s)
}

/// `out = T x` for the companion-like transition (`φ` on its support only).
#[inline]
fn transition(x: &[f64], phi: &[f64], phi_support: &[usize], out: &mut [f64]) {
    let r = x.len();
    out[..r - 1].copy_from_slice(&x[1..]);
    out[r - 1] = 0.0;
    let x0 = x[0];
    for &i in phi_support {
        out[i] += phi[i] * x0;
    }
}

/// `max |x_i|` (0 for an empty slice; NaNs ignored, as `f64::max` does).
/// Four running maxima instead of one: `max` is exact and order-free, so
/// the result is the sequential fold's, without its serial dependency.
fn max_abs(x: &[f64]) -> f64 {
    let mut m = [0.0f64; 4];
    let mut chunks = x.chunks_exact(4);
    for c in &mut chunks {
        for (mi, v) in m.iter_mut().zip(c) {
            *mi = mi.max(v.abs());
        }
    }
    let mut out = m[0].max(m[1]).max(m[2].max(m[3]));
    for v in chunks.remainder() {
        out = out.max(v.abs());
    }
    out
}

/// What [`filter`] returns.
#[derive(Debug, Clone)]
pub struct Filtered {
    /// `Σ_t ln F_t` over all observations.
    pub sumlog: f64,
    /// Standardised innovations `v_t / sqrt(F_t)`, one vector per input
    /// series (`n` values each).
    pub std_innov: Vec<Vec<f64>>,
    /// Predicted state `a_{n+1|n}` of each input series (`r` values), for
    /// forecasting.
    pub next_state: Vec<Vec<f64>>,
}

/// Runs the Kalman filter of the stationary ARMA(`φ`, `θ`) model (unit
/// innovation variance) over each of `series` (all of the same length),
/// with the Chandrasekhar recursions. `phi_support` lists the indices of
/// `φ` that may be non-zero (see `poly::support`). `None` if `φ` is not
/// stationary enough for the autocovariances, or a variance is not positive.
#[allow(clippy::needless_range_loop)] // time index shared by several series
pub fn filter(
    phi: &[f64],
    theta: &[f64],
    phi_support: &[usize],
    series: &[&[f64]],
) -> Option<Filtered> {
    let r = phi.len().max(theta.len() + 1);
    let n = series.first().map_or(0, |s| s.len());
    // Padded φ over 0..r so that `transition` can index it directly.
    let mut phi_r = vec![0.0; r];
    phi_r[..phi.len()].copy_from_slice(phi);
    let sigma0 = stationary_first_column(phi, theta)?;
    let mut f = sigma0[0];
    let mut k = vec![0.0; r];
    transition(&sigma0, &phi_r, phi_support, &mut k);
    let mut w = k.clone();
    let mut s = -1.0 / f;
    let mut tw = vec![0.0; r];
    let mut tmp = vec![0.0; r];
    let mut states: Vec<Vec<f64>> = vec![vec![0.0; r]; series.len()];
    let mut innov: Vec<Vec<f64>> = vec![Vec::with_capacity(n); series.len()];
    let mut sumlog = 0.0;
    let mut converged = false;
    for t in 0..n {
        if f.is_nan() || f <= 0.0 || !f.is_finite() {
            return None;
        }
        sumlog += f.ln();
        let sf = f.sqrt();
        for (c, a) in states.iter_mut().enumerate() {
            let v = series[c][t] - a[0];
            innov[c].push(v / sf);
            transition(a, &phi_r, phi_support, &mut tmp);
            let g = v / f;
            // Iterators, not indices: no bounds checks, so this vectorises.
            for ((ai, ti), ki) in a.iter_mut().zip(&tmp).zip(&k) {
                *ai = ti + ki * g;
            }
        }
        if converged {
            continue;
        }
        // Chandrasekhar step: P_{t+1} − P_t = W S W'.
        let u = w[0];
        let f_new = f + u * u * s;
        transition(&w, &phi_r, phi_support, &mut tw);
        let su = s * u;
        for (ki, twi) in k.iter_mut().zip(&tw) {
            *ki += twi * su;
        }
        let ku = u / f_new;
        for ((wi, twi), ki) in w.iter_mut().zip(&tw).zip(&k) {
            *wi = twi - ki * ku;
        }
        let wmax = max_abs(&w);
        s *= f_new / f;
        f = f_new;
        // Steady state: the gain no longer changes.
        if wmax * wmax * s.abs() < 1e-14 * f {
            converged = true;
        }
    }
    Some(Filtered {
        sumlog,
        std_innov: innov,
        next_state: states,
    })
}

/// Point forecasts `h` steps ahead of a stationary ARMA from the predicted
/// state `a_{n+1|n}`: `ŷ_{n+1} = a[0]`, then `a ← T a`.
pub fn forecast_state(phi: &[f64], theta: &[f64], state: &[f64], h: usize) -> Vec<f64> {
    let r = phi.len().max(theta.len() + 1);
    let mut phi_r = vec![0.0; r];
    phi_r[..phi.len()].copy_from_slice(phi);
    let support: Vec<usize> = (0..phi.len()).collect();
    let mut a = state.to_vec();
    let mut tmp = vec![0.0; r];
    let mut out = Vec::with_capacity(h);
    for _ in 0..h {
        out.push(a[0]);
        transition(&a, &phi_r, &support, &mut tmp);
        a.copy_from_slice(&tmp);
    }
    out
}
