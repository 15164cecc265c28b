//! Lag polynomials of seasonal ARIMA models: expansion of the multiplicative
//! form, R's PACF reparametrisation of AR parts, stationarity / invertibility
//! checks, and R's `maInvert`.
//!
//! Conventions (R's `arima`): the AR polynomial is `1 − φ_1 B − … − φ_p B^p`,
//! the MA polynomial `1 + θ_1 B + … + θ_q B^q`; a parameter vector is
//! `[ar(p), ma(q), sar(P), sma(Q)]`.

use super::Order;

/// Full non-seasonal-equivalent coefficients `(φ, θ)` of
/// `φ(B)Φ(B^m)` and `θ(B)Θ(B^m)` (R's `ARIMA_transPars` without transform):
/// `φ` has length `p + m·P`, `θ` length `q + m·Q`.
pub fn expand(par: &[f64], o: &Order) -> (Vec<f64>, Vec<f64>) {
    let (p, q, sp, sq, m) = (o.p, o.q, o.sp, o.sq, o.m.max(1));
    let (ar, rest) = par.split_at(p);
    let (ma, rest) = rest.split_at(q);
    let (sar, sma) = rest.split_at(sp);
    let sma = &sma[..sq];
    let mut phi = vec![0.0; p + m * sp];
    let mut theta = vec![0.0; q + m * sq];
    phi[..p].copy_from_slice(ar);
    theta[..q].copy_from_slice(ma);
    for (j, &s) in sar.iter().enumerate() {
        phi[(j + 1) * m - 1] += s;
        for (i, &a) in ar.iter().enumerate() {
            phi[(j + 1) * m + i] -= a * s;
        }
    }
    for (j, &s) in sma.iter().enumerate() {
        theta[(j + 1) * m - 1] += s;
        for (i, &a) in ma.iter().enumerate() {
            theta[(j + 1) * m + i] += a * s;
        }
    }
    (phi, theta)
}

/// Indices of the coefficients of [`expand`] that can be non-zero for the
/// order (the sparsity pattern of the multiplicative form): lags `i`,
/// `k·m + i` for the AR side and likewise for the MA side (0-based: index
/// `j` is lag `j + 1`).
pub fn support(o: &Order) -> (Vec<usize>, Vec<usize>) {
    let m = o.m.max(1);
    let side = |p: usize, sp: usize| {
        let mut v: Vec<usize> = Vec::new();
        for k in 0..=sp {
            for i in 0..=p {
                let lag = k * m + i;
                if lag > 0 {
                    v.push(lag - 1);
                }
            }
        }
        v.sort_unstable();
        v.dedup();
        v
    };
    (side(o.p, o.sp), side(o.q, o.sq))
}

/// R's `partrans`: maps unconstrained values to the coefficients of a
/// stationary AR polynomial (tanh to partial autocorrelations, then the
/// Durbin–Levinson recursion).
pub fn partrans(raw: &[f64]) -> Vec<f64> {
    let p = raw.len();
    let mut new: Vec<f64> = raw.iter().map(|v| v.tanh()).collect();
    let mut work = new.clone();
    for j in 1..p {
        let a = new[j];
        for k in 0..j {
            work[k] -= a * new[j - k - 1];
        }
        new[..j].copy_from_slice(&work[..j]);
    }
    new
}

/// R's `invpartrans`: inverse of [`partrans`] for a stationary AR
/// polynomial. Non-stationary input gives non-finite values.
pub fn invpartrans(phi: &[f64]) -> Vec<f64> {
    let p = phi.len();
    let mut new = phi.to_vec();
    let mut work = phi.to_vec();
    for j in (1..p).rev() {
        let a = new[j];
        for k in 0..j {
            work[k] = (new[k] + a * new[j - k - 1]) / (1.0 - a * a);
        }
        new[..j].copy_from_slice(&work[..j]);
    }
    new.iter().map(|v| v.atanh()).collect()
}

/// Whether every root of `1 − c_1 z − … − c_k z^k` lies strictly outside the
/// circle `|z| = radius` (Schur–Cohn step-down: the polynomial in `w =
/// z/radius` is stable iff every reflection coefficient has modulus < 1).
/// Trailing coefficients with `|c| ≤ 1e-8` are dropped first, as R's
/// `auto.arima` does before `polyroot`.
pub fn roots_outside(c: &[f64], radius: f64) -> bool {
    let k = c.iter().rposition(|v| v.abs() > 1e-8).map_or(0, |i| i + 1);
    if k == 0 {
        return true;
    }
    let mut a: Vec<f64> = (0..k).map(|i| c[i] * radius.powi(i as i32 + 1)).collect();
    for j in (0..k).rev() {
        let kappa = a[j];
        if !kappa.is_finite() || kappa.abs() >= 1.0 {
            return false;
        }
        let den = 1.0 - kappa * kappa;
        let prev: Vec<f64> = (0..j)
            .map(|i| (a[i] + kappa * a[j - 1 - i]) / den)
            .collect();
        a.truncate(j);
        a.copy_from_slice(&prev);
    }
    true
}

/// R's `arCheck`: the AR polynomial `1 − φ_1 B − …` is stationary.
pub fn ar_stationary(phi: &[f64]) -> bool {
    roots_outside(phi, 1.0)
}

/// A complex number, for the few polynomial roots `ma_invert` needs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct C(f64, f64);

impl C {
    fn add(self, o: C) -> C {
        C(self.0 + o.0, self.1 + o.1)
    }
    fn sub(self, o: C) -> C {
        C(self.0 - o.0, self.1 - o.1)
    }
    fn mul(self, o: C) -> C {
        C(self.0 * o.0 - self.1 * o.1, self.0 * o.1 + self.1 * o.0)
    }
    fn div(self, o: C) -> C {
        let d = o.0 * o.0 + o.1 * o.1;
        C(
            (self.0 * o.0 + self.1 * o.1) / d,
            (self.1 * o.0 - self.0 * o.1) / d,
        )
    }
    fn abs(self) -> f64 {
        self.0.hypot(self.1)
    }
}

/// Roots of `c_0 + c_1 z + … + c_k z^k` (`c_k ≠ 0`) by the Durand–Kerner
/// iteration (degrees here are at most 5).
fn poly_roots(c: &[f64]) -> Vec<C> {
    let k = c.len() - 1;
    let lead = c[k];
    let monic: Vec<f64> = c.iter().map(|v| v / lead).collect();
    let eval = |z: C| {
        let mut acc = C(1.0, 0.0);
        for i in (0..k).rev() {
            acc = acc.mul(z).add(C(monic[i], 0.0));
        }
        acc
    };
    // Starting points on a circle enclosing every root (Cauchy bound).
    let bound = 1.0 + monic[..k].iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut z: Vec<C> = (0..k)
        .map(|i| {
            let a = 2.0 * std::f64::consts::PI * i as f64 / k as f64 + 0.4;
            C(bound * a.cos(), bound * a.sin())
        })
        .collect();
    for _ in 0..1000 {
        let mut delta = 0.0f64;
        for i in 0..k {
            let mut den = C(1.0, 0.0);
            for (j, &zj) in z.iter().enumerate() {
                if j != i {
                    den = den.mul(z[i].sub(zj));
                }
            }
            let step = eval(z[i]).div(den);
            if step.0.is_finite() && step.1.is_finite() {
                z[i] = z[i].sub(step);
                delta = delta.max(step.abs());
            }
        }
        if delta < 1e-14 {
            break;
        }
    }
    z
}

/// R's `maInvert`: reflects the roots of `1 + θ_1 z + …` that lie inside the
/// unit circle to the outside (same autocovariances up to the innovation
/// variance; used by `arima` after an ML fit). Zero trailing coefficients
/// stay zero.
pub fn ma_invert(ma: &[f64]) -> Vec<f64> {
    let q = ma.len();
    let q0 = ma.iter().rposition(|&v| v != 0.0).map_or(0, |i| i + 1);
    if q0 == 0 {
        return ma.to_vec();
    }
    let mut c = vec![1.0];
    c.extend_from_slice(&ma[..q0]);
    let mut roots = poly_roots(&c);
    if roots.iter().all(|r| r.abs() >= 1.0) {
        return ma.to_vec();
    }
    if q0 == 1 {
        let mut out = vec![0.0; q];
        out[0] = 1.0 / ma[0];
        return out;
    }
    for r in roots.iter_mut() {
        if r.abs() < 1.0 {
            *r = C(1.0, 0.0).div(*r);
        }
    }
    // x <- 1; for (r in roots) x <- c(x, 0) - c(0, x) / r
    let mut x = vec![C(1.0, 0.0)];
    for r in &roots {
        let mut nx = x.clone();
        nx.push(C(0.0, 0.0));
        for i in 0..x.len() {
            nx[i + 1] = nx[i + 1].sub(x[i].div(*r));
        }
        x = nx;
    }
    let mut out: Vec<f64> = x[1..].iter().map(|v| v.0).collect();
    out.resize(q, 0.0);
    out
}

/// Coefficients `δ` of the differencing polynomial `(1−B)^d (1−B^m)^D =
/// 1 − δ_1 B − … − δ_k B^k` (R's `Delta`), `k = d + m·D`.
pub fn delta(d: usize, sd: usize, m: usize) -> Vec<f64> {
    let mut poly = vec![1.0];
    let mul = |poly: &Vec<f64>, lag: usize| {
        let mut out = vec![0.0; poly.len() + lag];
        for (i, &v) in poly.iter().enumerate() {
            out[i] += v;
            out[i + lag] -= v;
        }
        out
    };
    for _ in 0..d {
        poly = mul(&poly, 1);
    }
    for _ in 0..sd {
        poly = mul(&poly, m.max(1));
    }
    poly[1..].iter().map(|v| -v).collect()
}

/// Applies `(1−B)^d (1−B^m)^D` to `x`: the result has `len − d − m·D`
/// values (empty if `x` is too short).
pub fn difference(x: &[f64], d: usize, sd: usize, m: usize) -> Vec<f64> {
    let mut w = x.to_vec();
    for _ in 0..d {
        if w.is_empty() {
            break;
        }
        w = w.windows(2).map(|p| p[1] - p[0]).collect();
    }
    let m = m.max(1);
    for _ in 0..sd {
        if w.len() <= m {
            return Vec::new();
        }
        w = (m..w.len()).map(|t| w[t] - w[t - m]).collect();
    }
    w
}
