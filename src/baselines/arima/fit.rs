//! Fitting a seasonal ARIMA of fixed order with regressors: conditional sum
//! of squares (CSS), exact Gaussian maximum likelihood (ML), or CSS then ML
//! (CSS-ML, R's default), following R's `stats::arima` step by step.
//!
//! Model (regression with ARIMA errors): `y_t = x_t'β + u_t`,
//! `φ(B)Φ(B^m)(1−B)^d(1−B^m)^D u_t = θ(B)Θ(B^m) ε_t`, `ε_t ~ N(0, σ²)`.
//! The likelihood is that of the differenced errors `w = Δ u` (exact for
//! the ARMA part through the Kalman filter of `kalman`); this is the limit
//! of R's diffuse prior (`kappa = 1e6`) and what statsmodels' SARIMAX
//! computes with its exact diffuse initialisation.
//!
//! β is not searched by the optimiser: for given ARMA parameters the
//! Gaussian likelihood (and the CSS) is maximised over β in closed form by
//! generalised least squares on the filtered series (the filter is linear
//! in the data), so the optimiser only sees the ARMA parameters. The joint
//! optimum is the same as R's, which optimises β numerically.
//!
//! Cost: the CSS objective reuses one time-major workspace per fit (see
//! `Workspace`): no allocation per evaluation, all columns filtered side by
//! side. Invariant: every value equals the column-by-column formulas bit
//! for bit (same operations in the same order), which a test checks.

use super::kalman;
use super::optim::{bfgs, Status};
use super::poly;
use super::{ArimaError, Order};

/// Estimation method (R's `method` argument of `arima`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Conditional sum of squares.
    Css,
    /// Exact maximum likelihood from zero starting values.
    Ml,
    /// CSS estimates as the starting point of ML (R's default).
    CssMl,
}

/// The deterministic term a fit carries besides the user's regressors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Constant {
    /// No constant (also whenever `d + D ≥ 2`).
    None,
    /// Mean of the series (`d + D = 0`): regressor column of ones.
    Intercept(f64),
    /// Slope per step (`d + D = 1`): regressor column `1, 2, …, n` (R's
    /// `drift`).
    Drift(f64),
}

/// How point forecasts continue the fitted errors.
#[derive(Debug, Clone)]
enum Continuation {
    /// Predicted state `a_{n+1|n}` of the differenced errors (exact filter).
    Kalman(Vec<f64>),
    /// Conditional recursion (CSS fits whose AR part is not stationary):
    /// the last differenced errors and CSS residuals, oldest first.
    Conditional { w: Vec<f64>, e: Vec<f64> },
}

/// A fitted seasonal ARIMA with regressors.
#[derive(Debug, Clone)]
pub struct ArimaFit {
    /// The order.
    pub order: Order,
    /// `[ar(p), ma(q), sar(P), sma(Q)]` (R's coefficient order).
    pub coef: Vec<f64>,
    /// Intercept or drift, if any.
    pub constant: Constant,
    /// Coefficients of the user's regressors, in their column order.
    pub xreg_coef: Vec<f64>,
    /// Innovation variance: `SS / n_used` for ML (R's `sigma2`), the CSS mean
    /// square for CSS.
    pub sigma2: f64,
    /// Gaussian log-likelihood (R's `loglik`; for CSS fits R's CSS version).
    pub loglik: f64,
    /// AIC (NaN for CSS fits, as in R).
    pub aic: f64,
    /// Observations after differencing (`n − d − m·D`).
    pub n_used: usize,
    /// Free parameters including σ² (ARMA + constant + regressors + 1).
    pub npar: usize,
    /// Method that produced the estimates.
    pub method: Method,
    /// Whether the final optimisation converged (R's `code == 0`).
    pub converged: bool,
    /// Objective evaluations spent.
    pub evals: usize,
    n: usize,
    phi: Vec<f64>,
    theta: Vec<f64>,
    /// Last `d + m·D` values of `u = y − Xβ`.
    u_tail: Vec<f64>,
    cont: Continuation,
}

/// The regressors of one fit: the constant column (if any) then the user's.
struct Design {
    cols: Vec<Vec<f64>>,
    constant: ConstKind,
}

#[derive(Clone, Copy, PartialEq)]
enum ConstKind {
    None,
    Intercept,
    Drift,
}

/// Least squares `min ||y − Σ β_k x_k||²` by the (column-scaled) normal
/// equations; `None` if the columns are (numerically) rank deficient.
/// Returns `(β, residual sum of squares)`.
pub(crate) fn lstsq(y: &[f64], xs: &[Vec<f64>]) -> Option<(Vec<f64>, f64)> {
    let cols: Vec<&[f64]> = xs.iter().map(|c| c.as_slice()).collect();
    let mut ws = Workspace::default();
    ws.load_columns(y, &cols);
    ws.solve_rows(0, false)
        .map(|(beta, ssq)| (beta.to_vec(), ssq))
}

/// Reusable buffers for the least-squares and CSS steps, so that an
/// objective evaluation allocates nothing.
///
/// Layout (why): the series and its regressors are stored *time-major*
/// (`k1 = 1 + regressors` values per time step: `y_t, x_{0,t}, …`, padded
/// with zero columns to a `stride` of 4, 8, 12 or 16), so the CSS recursion
/// updates every column with one fixed-width element-wise loop per lag and
/// the Gram matrix is accumulated in registers. Each column still sees
/// exactly the operations of the column-by-column formulas in the same
/// order (every sum runs over time in order; the compiler only runs the
/// columns side by side), so every value is bit-for-bit what the
/// sequential code gives; what changes is that `k1` independent dependency
/// chains overlap instead of one latency-bound chain at a time. Zero
/// padding columns stay zero through the filter and are never read back.
#[derive(Default)]
struct Workspace {
    /// Columns in the time-major layout (input of the CSS filter or of a
    /// plain least-squares solve).
    x: Vec<f64>,
    /// CSS residuals of every column, same layout.
    e: Vec<f64>,
    /// Number of time steps.
    n: usize,
    /// Columns in use per time step.
    k1: usize,
    /// Values stored per time step (`k1`, or `k1` rounded up to a multiple
    /// of 4 when that is at most 16).
    stride: usize,
    /// `Z'Z`, `Z = [y, X]` (`k1` rows of `stride` values).
    gram: Vec<f64>,
    /// Scaled normal equations and the solution.
    g: Vec<f64>,
    scale: Vec<f64>,
    rhs: Vec<f64>,
    beta: Vec<f64>,
}

/// The padded width of `k1` columns (see [`Workspace`]).
fn stride_for(k1: usize) -> usize {
    if k1 > 1 && k1 <= 16 {
        k1.div_ceil(4) * 4
    } else {
        k1
    }
}

/// One CSS step for every column at once: `cur = x_l − Σ φ_j x_{l−j−1} −
/// Σ θ_j e_{l−j−1}` (MA lags only while `j < lim`), `W` values per row.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the recursion's state, spelled out
fn css_rows<const W: usize>(
    x: &[f64],
    e: &mut [f64],
    n: usize,
    ncond: usize,
    phi: &[f64],
    theta: &[f64],
    sup: &(Vec<usize>, Vec<usize>),
) {
    for l in ncond..n {
        let (done, rest) = e.split_at_mut(l * W);
        let mut cur = [0.0f64; W];
        cur.copy_from_slice(&x[l * W..(l + 1) * W]);
        for &j in &sup.0 {
            let a = phi[j];
            let src = &x[(l - j - 1) * W..(l - j) * W];
            for c in 0..W {
                cur[c] -= a * src[c];
            }
        }
        let lim = (l - ncond).min(theta.len());
        for &j in &sup.1 {
            if j >= lim {
                break;
            }
            let a = theta[j];
            let src = &done[(l - j - 1) * W..(l - j) * W];
            for c in 0..W {
                cur[c] -= a * src[c];
            }
        }
        rest[..W].copy_from_slice(&cur);
    }
}

/// `gram[i][j] = Σ_t z_{t,i} z_{t,j}` for `i < k1`, `j < W` over `rows`
/// (each sum in time order, held in registers across time).
#[inline(always)]
fn gram_rows<const W: usize>(rows: &[f64], k1: usize, gram: &mut [f64]) {
    if W > 8 {
        // One row of the Gram matrix per pass: two accumulators of 12 or 16
        // values would not fit the 16 SSE registers (measured: spills).
        for i in 0..k1 {
            let mut acc = [0.0f64; W];
            for row in rows.chunks_exact(W) {
                let row = &row[..W];
                let x0 = row[i];
                for c in 0..W {
                    acc[c] += x0 * row[c];
                }
            }
            gram[i * W..(i + 1) * W].copy_from_slice(&acc);
        }
        return;
    }
    let mut i = 0;
    while i < k1 {
        // Two rows of the Gram matrix per pass over the data.
        let i2 = (i + 1).min(W - 1);
        let mut acc0 = [0.0f64; W];
        let mut acc1 = [0.0f64; W];
        for row in rows.chunks_exact(W) {
            let row = &row[..W];
            let (x0, x1) = (row[i], row[i2]);
            for c in 0..W {
                acc0[c] += x0 * row[c];
                acc1[c] += x1 * row[c];
            }
        }
        gram[i * W..(i + 1) * W].copy_from_slice(&acc0);
        if i + 1 < k1 {
            gram[(i + 1) * W..(i + 2) * W].copy_from_slice(&acc1);
        }
        i += 2;
    }
}

impl Workspace {
    /// Loads `y` and the columns `xs` (each `y.len()` long) time-major.
    fn load_columns(&mut self, y: &[f64], xs: &[&[f64]]) {
        let n = y.len();
        let k1 = xs.len() + 1;
        let stride = stride_for(k1);
        self.n = n;
        self.k1 = k1;
        self.stride = stride;
        self.x.clear();
        self.x.resize(n * stride, 0.0);
        for (t, row) in self.x.chunks_exact_mut(stride).enumerate() {
            row[0] = y[t];
            for (v, c) in row[1..].iter_mut().zip(xs) {
                *v = c[t];
            }
        }
    }

    /// CSS residuals of every loaded column (R's `ARIMA_CSS`) into `self.e`:
    /// zero for the first `p + m·P` steps, then `e_l = w_l − Σ φ_j w_{l−j} −
    /// Σ θ_j e_{l−j}` (MA terms only over residuals already computed).
    fn css_filter(&mut self, phi: &[f64], theta: &[f64], sup: &(Vec<usize>, Vec<usize>)) {
        let (n, k1, st) = (self.n, self.k1, self.stride);
        let ncond = phi.len();
        self.e.clear();
        self.e.resize(n * st, 0.0);
        let x = &self.x;
        let e = &mut self.e;
        match st {
            4 => return css_rows::<4>(x, e, n, ncond, phi, theta, sup),
            8 => return css_rows::<8>(x, e, n, ncond, phi, theta, sup),
            12 => return css_rows::<12>(x, e, n, ncond, phi, theta, sup),
            16 => return css_rows::<16>(x, e, n, ncond, phi, theta, sup),
            _ => {}
        }
        if k1 == 1 {
            // One column: the scalar recursion.
            for l in ncond..n {
                let mut tmp = x[l];
                for &j in &sup.0 {
                    tmp -= phi[j] * x[l - j - 1];
                }
                let lim = (l - ncond).min(theta.len());
                for &j in &sup.1 {
                    if j >= lim {
                        break;
                    }
                    tmp -= theta[j] * e[l - j - 1];
                }
                e[l] = tmp;
            }
            return;
        }
        // More than 16 columns (only through the general regression API).
        for l in ncond..n {
            let (done, rest) = e.split_at_mut(l * st);
            let cur = &mut rest[..st];
            cur.copy_from_slice(&x[l * st..(l + 1) * st]);
            for &j in &sup.0 {
                let a = phi[j];
                let src = &x[(l - j - 1) * st..(l - j) * st];
                for (o, v) in cur.iter_mut().zip(src) {
                    *o -= a * v;
                }
            }
            let lim = (l - ncond).min(theta.len());
            for &j in &sup.1 {
                if j >= lim {
                    break;
                }
                let a = theta[j];
                let src = &done[(l - j - 1) * st..(l - j) * st];
                for (o, v) in cur.iter_mut().zip(src) {
                    *o -= a * v;
                }
            }
        }
    }

    /// Least squares of column 0 on the other columns over time steps
    /// `from..n` of `self.e` (`filtered`, after [`Workspace::css_filter`]) or
    /// of `self.x`: `(β, residual SS)`, `None` if rank deficient. β lives in
    /// the workspace until the next call.
    fn solve_rows(&mut self, from: usize, filtered: bool) -> Option<(&[f64], f64)> {
        let (n, k1, st) = (self.n, self.k1, self.stride);
        let k = k1 - 1;
        let z = if filtered { &self.e } else { &self.x };
        let rows = &z[from * st..n * st];
        if k == 0 {
            let ssq = rows.iter().fold(0.0, |s, v| s + v * v);
            self.beta.clear();
            return Some((&self.beta, ssq));
        }
        // Gram matrix; every entry is summed over t in order.
        self.gram.clear();
        self.gram.resize(k1 * st, 0.0);
        match st {
            4 => gram_rows::<4>(rows, k1, &mut self.gram),
            8 => gram_rows::<8>(rows, k1, &mut self.gram),
            12 => gram_rows::<12>(rows, k1, &mut self.gram),
            16 => gram_rows::<16>(rows, k1, &mut self.gram),
            _ => {
                for row in rows.chunks_exact(st) {
                    for (i, &xi) in row[..k1].iter().enumerate() {
                        let gi = &mut self.gram[i * st..i * st + i + 1];
                        for (g, xj) in gi.iter_mut().zip(&row[..=i]) {
                            *g += xi * xj;
                        }
                    }
                }
            }
        }
        // G = X'X (columns 1..), b = X'y (column 0), from the lower triangle.
        let gram = &self.gram;
        let at = |i: usize, j: usize| gram[i.max(j) * st + i.min(j)];
        self.g.clear();
        self.g.resize(k * k, 0.0);
        self.scale.clear();
        for i in 0..k {
            let d = at(i + 1, i + 1);
            let s = if d > 0.0 { 1.0 / d.sqrt() } else { 0.0 };
            if s == 0.0 || !s.is_finite() {
                return None;
            }
            self.scale.push(s);
        }
        let g = &mut self.g;
        let scale = &self.scale;
        for i in 0..k {
            for j in 0..k {
                g[i * k + j] = at(i + 1, j + 1) * (scale[i] * scale[j]);
            }
        }
        let b = &mut self.rhs;
        b.clear();
        b.extend((0..k).map(|i| at(i + 1, 0) * scale[i]));
        // Cholesky G = L L'.
        for j in 0..k {
            let mut d = g[j * k + j];
            for l in 0..j {
                d -= g[j * k + l] * g[j * k + l];
            }
            if d.is_nan() || d <= 1e-11 {
                return None;
            }
            let d = d.sqrt();
            g[j * k + j] = d;
            for i in j + 1..k {
                let mut v = g[i * k + j];
                for l in 0..j {
                    v -= g[i * k + l] * g[j * k + l];
                }
                g[i * k + j] = v / d;
            }
        }
        for i in 0..k {
            let s: f64 = (0..i).map(|l| g[i * k + l] * b[l]).sum();
            b[i] = (b[i] - s) / g[i * k + i];
        }
        for i in (0..k).rev() {
            let s: f64 = (i + 1..k).map(|l| g[l * k + i] * b[l]).sum();
            b[i] = (b[i] - s) / g[i * k + i];
        }
        self.beta.clear();
        self.beta.extend(b.iter().zip(scale).map(|(v, s)| v * s));
        let beta = &self.beta;
        let mut ssq = 0.0;
        for row in rows.chunks_exact(st) {
            let mut r = row[0];
            for (bk, v) in beta.iter().zip(&row[1..k1]) {
                r -= bk * v;
            }
            ssq += r * r;
        }
        Some((&self.beta, ssq))
    }
}

/// The CSS criterion's data: the differenced series and regressors, loaded
/// once per fit into a [`Workspace`] the objective reuses.
struct Css {
    ws: Workspace,
}

impl Css {
    fn new(w: &[f64], wx: &[Vec<f64>]) -> Self {
        let cols: Vec<&[f64]> = wx.iter().map(|c| c.as_slice()).collect();
        let mut ws = Workspace::default();
        ws.load_columns(w, &cols);
        Css { ws }
    }

    /// `σ²_CSS` and β at `(φ, θ)` (β valid until the next call); `None` if
    /// not finite or the regressors are rank deficient.
    fn eval(
        &mut self,
        phi: &[f64],
        theta: &[f64],
        sup: &(Vec<usize>, Vec<usize>),
    ) -> Option<(f64, &[f64])> {
        let ncond = phi.len();
        let n = self.ws.n;
        if ncond >= n {
            return None;
        }
        let nu = (n - ncond) as f64;
        self.ws.css_filter(phi, theta, sup);
        let (beta, ssq) = self.ws.solve_rows(ncond, true)?;
        let s2 = ssq / nu;
        if s2.is_finite() {
            Some((s2, beta))
        } else {
            None
        }
    }

    /// [`Css::eval`] plus the residuals of `w − Xβ` (zero for the first
    /// `p + m·P` steps).
    fn eval_resid(
        &mut self,
        phi: &[f64],
        theta: &[f64],
        sup: &(Vec<usize>, Vec<usize>),
    ) -> Option<(f64, Vec<f64>, Vec<f64>)> {
        let ncond = phi.len();
        let (s2, beta) = self.eval(phi, theta, sup)?;
        let beta = beta.to_vec();
        let (k1, st) = (self.ws.k1, self.ws.stride);
        let mut resid = vec![0.0; self.ws.n];
        for (t, row) in self.ws.e.chunks_exact(st).enumerate().skip(ncond) {
            let mut r = row[0];
            for (b, v) in beta.iter().zip(&row[1..k1]) {
                r -= b * v;
            }
            resid[t] = r;
        }
        Some((s2, beta, resid))
    }
}

/// `(SS, Σ ln F, β, predicted states)` of [`ml_eval`].
type MlEval = (f64, f64, Vec<f64>, Vec<Vec<f64>>);

/// Exact likelihood pieces at `(φ, θ)`: `(SS, Σ ln F, β, predicted states)`.
fn ml_eval(
    w: &[f64],
    wx: &[Vec<f64>],
    phi: &[f64],
    theta: &[f64],
    phi_support: &[usize],
) -> Option<MlEval> {
    let mut series: Vec<&[f64]> = Vec::with_capacity(wx.len() + 1);
    series.push(w);
    for c in wx {
        series.push(c);
    }
    let f = kalman::filter(phi, theta, phi_support, &series)?;
    let (beta, ssq) = lstsq(&f.std_innov[0], &f.std_innov[1..])?;
    if !ssq.is_finite() || !f.sumlog.is_finite() {
        return None;
    }
    Some((ssq, f.sumlog, beta, f.next_state))
}

/// Maps optimiser parameters to model coefficients: AR and seasonal AR
/// parts through [`poly::partrans`] when `trans`.
fn untransform(x: &[f64], o: &Order, trans: bool) -> Vec<f64> {
    let mut c = x.to_vec();
    if trans {
        if o.p > 0 {
            let v = poly::partrans(&x[..o.p]);
            c[..o.p].copy_from_slice(&v);
        }
        let s = o.p + o.q;
        if o.sp > 0 {
            let v = poly::partrans(&x[s..s + o.sp]);
            c[s..s + o.sp].copy_from_slice(&v);
        }
    }
    c
}

/// Fits `order` to `y` with regressor columns `xreg` (each `y.len()` long)
/// and, if `constant`, an intercept (`d + D = 0`) or drift (`d + D = 1`)
/// column; `fixed` gives the ARMA coefficients instead of estimating them.
///
/// Errors: too few observations, non-finite inputs, rank-deficient
/// regressors, a non-stationary CSS start for ML (R's "non-stationary AR
/// part from CSS"), or an optimisation that met non-finite values.
pub fn fit(
    y: &[f64],
    xreg: &[Vec<f64>],
    order: Order,
    constant: bool,
    method: Method,
    fixed: Option<&[f64]>,
) -> Result<ArimaFit, ArimaError> {
    let n = y.len();
    let o = order;
    let m = o.m.max(1);
    if !y.iter().all(|v| v.is_finite()) {
        return Err(ArimaError::NonFinite);
    }
    for c in xreg {
        if c.len() != n {
            return Err(ArimaError::XregShape {
                expected: n,
                got: c.len(),
            });
        }
        if !c.iter().all(|v| v.is_finite()) {
            return Err(ArimaError::NonFinite);
        }
    }
    let nd = o.d + m * o.sd;
    if n <= nd + o.p + m * o.sp {
        return Err(ArimaError::TooShort);
    }
    let n_used = n - nd;
    let kind = match (constant, o.d + o.sd) {
        (true, 0) => ConstKind::Intercept,
        (true, 1) => ConstKind::Drift,
        _ => ConstKind::None,
    };
    let mut design = Design {
        cols: Vec::with_capacity(xreg.len() + 1),
        constant: kind,
    };
    match kind {
        ConstKind::Intercept => design.cols.push(vec![1.0; n]),
        ConstKind::Drift => design.cols.push((1..=n).map(|t| t as f64).collect()),
        ConstKind::None => {}
    }
    design.cols.extend(xreg.iter().cloned());
    let w = poly::difference(y, o.d, o.sd, m);
    let wx: Vec<Vec<f64>> = design
        .cols
        .iter()
        .map(|c| poly::difference(c, o.d, o.sd, m))
        .collect();
    let narma = o.p + o.q + o.sp + o.sq;
    let sup = poly::support(&o);
    let npar = narma * usize::from(fixed.is_none()) + design.cols.len() + 1;

    let mut css = Css::new(&w, &wx);
    let mut css_obj = |x: &[f64]| -> f64 {
        let (phi, theta) = poly::expand(x, &o);
        match css.eval(&phi, &theta, &sup) {
            Some((s2, _)) => 0.5 * s2.ln(),
            None => f64::INFINITY,
        }
    };
    let ml_obj = |x: &[f64], trans: bool| -> f64 {
        let c = untransform(x, &o, trans);
        let (phi, theta) = poly::expand(&c, &o);
        match ml_eval(&w, &wx, &phi, &theta, &sup.0) {
            Some((ssq, sumlog, _, _)) => {
                let nu = n_used as f64;
                let s2 = ssq / nu;
                if s2 > 0.0 {
                    0.5 * (s2.ln() + sumlog / nu)
                } else {
                    f64::NAN
                }
            }
            None => f64::INFINITY,
        }
    };

    let mut evals = 0usize;
    let mut converged = true;
    let coef: Vec<f64> = if let Some(fx) = fixed {
        if fx.len() != narma {
            return Err(ArimaError::XregShape {
                expected: narma,
                got: fx.len(),
            });
        }
        fx.to_vec()
    } else if narma == 0 {
        Vec::new()
    } else {
        let mut init = vec![0.0; narma];
        if method == Method::Css || method == Method::CssMl {
            let res = bfgs(&mut css_obj, &init, 100, 1e-3);
            evals += res.evals;
            if res.status == Status::BadGradient {
                return Err(ArimaError::Optimisation);
            }
            if method == Method::Css {
                converged = res.status == Status::Converged;
                init = res.x;
            } else if res.status == Status::Converged {
                init = res.x;
            }
        }
        if method == Method::Css {
            init
        } else {
            if method == Method::CssMl {
                let s = o.p + o.q;
                if !poly::ar_stationary(&init[..o.p]) || !poly::ar_stationary(&init[s..s + o.sp]) {
                    return Err(ArimaError::NonStationary);
                }
            }
            // R's transform.pars = TRUE: AR parts in PACF space, MA parts
            // made invertible first.
            let mut x0 = init.clone();
            if o.p > 0 {
                let v = poly::invpartrans(&init[..o.p]);
                x0[..o.p].copy_from_slice(&v);
            }
            if o.q > 0 {
                let v = poly::ma_invert(&init[o.p..o.p + o.q]);
                x0[o.p..o.p + o.q].copy_from_slice(&v);
            }
            let s = o.p + o.q;
            if o.sp > 0 {
                let v = poly::invpartrans(&init[s..s + o.sp]);
                x0[s..s + o.sp].copy_from_slice(&v);
            }
            if o.sq > 0 {
                let v = poly::ma_invert(&init[s + o.sp..]);
                x0[s + o.sp..].copy_from_slice(&v);
            }
            if !x0.iter().all(|v| v.is_finite()) {
                return Err(ArimaError::NonStationary);
            }
            let res = bfgs(&mut |x| ml_obj(x, true), &x0, 100, 1e-3);
            evals += res.evals;
            if res.status == Status::BadGradient {
                return Err(ArimaError::Optimisation);
            }
            converged = res.status == Status::Converged;
            let mut c = untransform(&res.x, &o, true);
            if o.q > 0 {
                let v = poly::ma_invert(&c[o.p..o.p + o.q]);
                c[o.p..o.p + o.q].copy_from_slice(&v);
            }
            if o.sq > 0 {
                let v = poly::ma_invert(&c[s + o.sp..]);
                c[s + o.sp..].copy_from_slice(&v);
            }
            c
        }
    };

    // Final evaluation with the estimates.
    let (phi, theta) = poly::expand(&coef, &o);
    let nu = n_used as f64;
    let two_pi_term = nu + nu * (2.0 * std::f64::consts::PI).ln();
    let ml = if method == Method::Css {
        None
    } else {
        Some(ml_eval(&w, &wx, &phi, &theta, &sup.0).ok_or(ArimaError::Optimisation)?)
    };
    let (beta, sigma2, loglik, aic, cont) = match ml {
        Some((ssq, sumlog, beta, states)) => {
            let s2 = ssq / nu;
            let value = nu * (s2.ln() + sumlog / nu) + two_pi_term;
            let state = combine_states(&states, &beta);
            (
                beta,
                s2,
                -0.5 * value,
                value + 2.0 * npar as f64,
                Continuation::Kalman(state),
            )
        }
        None => {
            let (s2, beta, resid) = css
                .eval_resid(&phi, &theta, &sup)
                .ok_or(ArimaError::Optimisation)?;
            let value = nu * s2.ln() + two_pi_term;
            // Forecasts from the exact filter's state when it exists (as R
            // runs `arimaSS` after a CSS fit), else by the CSS recursion.
            let cont = match ml_eval(&w, &wx, &phi, &theta, &sup.0) {
                Some((_, _, b2, states)) if poly::ar_stationary(&phi) => {
                    // The state must belong to the CSS β, not the GLS one.
                    let _ = b2;
                    let series_state = combine_states(&states, &beta);
                    Continuation::Kalman(series_state)
                }
                _ => {
                    let mut wu = w.clone();
                    for (c, b) in wx.iter().zip(&beta) {
                        for (v, x) in wu.iter_mut().zip(c) {
                            *v -= b * x;
                        }
                    }
                    let keep = phi.len().max(theta.len()).max(1);
                    let from = wu.len().saturating_sub(keep);
                    Continuation::Conditional {
                        w: wu[from..].to_vec(),
                        e: resid[from..].to_vec(),
                    }
                }
            };
            (beta, s2, -0.5 * value, f64::NAN, cont)
        }
    };
    let (constant_out, xreg_coef) = match design.constant {
        ConstKind::None => (Constant::None, beta.clone()),
        ConstKind::Intercept => (Constant::Intercept(beta[0]), beta[1..].to_vec()),
        ConstKind::Drift => (Constant::Drift(beta[0]), beta[1..].to_vec()),
    };
    let mut u_tail = Vec::with_capacity(nd);
    for t in n - nd..n {
        let mut v = y[t];
        for (c, b) in design.cols.iter().zip(&beta) {
            v -= b * c[t];
        }
        u_tail.push(v);
    }
    Ok(ArimaFit {
        order: o,
        coef,
        constant: constant_out,
        xreg_coef,
        sigma2,
        loglik,
        aic,
        n_used,
        npar,
        method,
        converged,
        evals,
        n,
        phi,
        theta,
        u_tail,
        cont,
    })
}

/// `a_y − Σ β_k a_k`: the state of `w − Σ β_k w_k` (the filter is linear).
fn combine_states(states: &[Vec<f64>], beta: &[f64]) -> Vec<f64> {
    let mut a = states[0].clone();
    for (s, b) in states[1..].iter().zip(beta) {
        for (v, x) in a.iter_mut().zip(s) {
            *v -= b * x;
        }
    }
    a
}

impl ArimaFit {
    /// Full expanded AR coefficients `φ` (length `p + m·P`).
    pub fn phi(&self) -> &[f64] {
        &self.phi
    }
    /// Full expanded MA coefficients `θ` (length `q + m·Q`).
    pub fn theta(&self) -> &[f64] {
        &self.theta
    }
    /// AICc (R's `aicc`): `aic + 2k(k+1)/(n_used − k − 1)`, `k = npar`.
    pub fn aicc(&self) -> f64 {
        let k = self.npar as f64;
        let den = self.n_used as f64 - k - 1.0;
        if den > 0.0 {
            self.aic + 2.0 * k * (k + 1.0) / den
        } else {
            f64::INFINITY
        }
    }
    /// BIC: `aic + k(ln n_used − 2)`.
    pub fn bic(&self) -> f64 {
        self.aic + self.npar as f64 * ((self.n_used as f64).ln() - 2.0)
    }

    /// Point forecasts for the `h` steps after the fitted series.
    /// `xreg_future` holds the future values of the user's regressors, one
    /// column per regressor (each at least `h` long); it must have as many
    /// columns as the fit had.
    pub fn forecast(&self, h: usize, xreg_future: &[Vec<f64>]) -> Result<Vec<f64>, ArimaError> {
        if xreg_future.len() != self.xreg_coef.len() {
            return Err(ArimaError::XregShape {
                expected: self.xreg_coef.len(),
                got: xreg_future.len(),
            });
        }
        if let Some(c) = xreg_future.iter().find(|c| c.len() < h) {
            return Err(ArimaError::XregShape {
                expected: h,
                got: c.len(),
            });
        }
        let w_hat = match &self.cont {
            Continuation::Kalman(state) => kalman::forecast_state(&self.phi, &self.theta, state, h),
            Continuation::Conditional { w, e } => {
                let mut w = w.clone();
                let mut e = e.clone();
                let mut out = Vec::with_capacity(h);
                for _ in 0..h {
                    let l = w.len();
                    let mut v = 0.0;
                    for (j, ph) in self.phi.iter().enumerate() {
                        if j < l {
                            v += ph * w[l - j - 1];
                        }
                    }
                    for (j, th) in self.theta.iter().enumerate() {
                        if j < l {
                            v += th * e[l - j - 1];
                        }
                    }
                    w.push(v);
                    e.push(0.0);
                    out.push(v);
                }
                out
            }
        };
        let m = self.order.m.max(1);
        let delta = poly::delta(self.order.d, self.order.sd, m);
        let mut u = self.u_tail.clone();
        let mut out = Vec::with_capacity(h);
        for (i, wv) in w_hat.iter().enumerate() {
            let l = u.len();
            let mut v = *wv;
            for (j, dj) in delta.iter().enumerate() {
                v += dj * u[l - j - 1];
            }
            u.push(v);
            let mut yv = v;
            match self.constant {
                Constant::None => {}
                Constant::Intercept(b) => yv += b,
                Constant::Drift(b) => yv += b * (self.n + i + 1) as f64,
            }
            for (c, b) in xreg_future.iter().zip(&self.xreg_coef) {
                yv += b * c[i];
            }
            out.push(yv);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! The time-major workspace against the column-by-column formulas it
    //! replaced: equal bit for bit, for every padded width.
    use super::*;

    /// The column-by-column CSS recursion (the code before the workspace).
    fn css_column(
        w: &[f64],
        phi: &[f64],
        theta: &[f64],
        sup: &(Vec<usize>, Vec<usize>),
    ) -> Vec<f64> {
        let n = w.len();
        let ncond = phi.len();
        let mut out = vec![0.0; n];
        for l in ncond..n {
            let mut tmp = w[l];
            for &j in &sup.0 {
                tmp -= phi[j] * w[l - j - 1];
            }
            let lim = (l - ncond).min(theta.len());
            for &j in &sup.1 {
                if j >= lim {
                    break;
                }
                tmp -= theta[j] * out[l - j - 1];
            }
            out[l] = tmp;
        }
        out
    }

    /// Sequential dot product (each sum in time order).
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        let mut s = 0.0;
        for (x, y) in a.iter().zip(b) {
            s += x * y;
        }
        s
    }

    #[test]
    fn workspace_matches_column_by_column_bit_for_bit() {
        // A small deterministic generator (no dependency on a rand crate).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let n = 150;
        let o = Order::seasonal(2, 0, 1, 1, 0, 1, 7);
        let sup = poly::support(&o);
        let par = [0.3, -0.2, 0.4, 0.5, -0.3];
        let (phi, theta) = poly::expand(&par, &o);
        let ncond = phi.len();
        for nx in [0usize, 1, 2, 3, 4, 7, 11, 13, 15, 17] {
            let y: Vec<f64> = (0..n).map(|_| next() * 10.0).collect();
            let xs: Vec<Vec<f64>> = (0..nx).map(|_| (0..n).map(|_| next()).collect()).collect();
            let mut css = Css::new(&y, &xs);
            let got = css.eval_resid(&phi, &theta, &sup);
            // Reference: filter each column, then the normal equations with
            // sequential sums, as `lstsq` did column by column.
            let ey = css_column(&y, &phi, &theta, &sup);
            let ex: Vec<Vec<f64>> = xs
                .iter()
                .map(|c| css_column(c, &phi, &theta, &sup)[ncond..].to_vec())
                .collect();
            let (s2, beta, resid) = got.expect("full rank");
            let (beta_ref, ssq_ref) = lstsq(&ey[ncond..], &ex).expect("full rank");
            assert_eq!(
                s2.to_bits(),
                (ssq_ref / (n - ncond) as f64).to_bits(),
                "nx {nx}"
            );
            for (a, b) in beta.iter().zip(&beta_ref) {
                assert_eq!(a.to_bits(), b.to_bits(), "nx {nx}");
            }
            let mut resid_ref = ey.clone();
            for (c, b) in ex.iter().zip(&beta_ref) {
                for (r, v) in resid_ref[ncond..].iter_mut().zip(c) {
                    *r -= b * v;
                }
            }
            for (a, b) in resid.iter().zip(&resid_ref) {
                assert_eq!(a.to_bits(), b.to_bits(), "nx {nx}");
            }
            // The Gram matrix itself against sequential dot products.
            if nx > 0 {
                let (g_beta, _) = lstsq(&y, &xs).expect("full rank");
                let k = nx;
                let mut g = vec![0.0; k * k];
                let mut b = vec![0.0; k];
                for i in 0..k {
                    for j in 0..k {
                        g[i * k + j] = dot(&xs[i], &xs[j]);
                    }
                    b[i] = dot(&xs[i], &y);
                }
                // Solve the unscaled normal equations loosely: the solver's
                // scaling is shared, so only the Gram sums are checked here.
                let mut ws = Workspace::default();
                let cols: Vec<&[f64]> = xs.iter().map(|c| c.as_slice()).collect();
                ws.load_columns(&y, &cols);
                ws.solve_rows(0, false).expect("full rank");
                let st = ws.stride;
                for i in 0..k {
                    for j in 0..=i {
                        assert_eq!(
                            ws.gram[(i + 1) * st + j + 1].to_bits(),
                            g[i * k + j].to_bits()
                        );
                    }
                    assert_eq!(ws.gram[(i + 1) * st].to_bits(), b[i].to_bits());
                }
                assert_eq!(g_beta.len(), k);
            }
        }
    }
}
