//! Unconstrained quasi-Newton minimisation: a port of R's `optim(method =
//! "BFGS")` (`vmmin` in R's `optim.c`), the optimiser R's `arima` and the
//! `forecast` package use, with R's central-difference gradient
//! (`ndeps = 1e-3`, `parscale = 1`).
//!
//! Invariants: the objective is called only with finite arguments; a
//! non-finite objective value is treated as "worse than anything" by the line
//! search. A non-finite finite-difference gradient stops the optimisation and
//! reports [`Status::BadGradient`] (R raises an error there, which makes
//! `auto.arima` drop the model).

/// How a minimisation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Relative change of the objective below `reltol` (R's code 0).
    Converged,
    /// `maxit` iterations reached (R's code 1).
    MaxIter,
    /// The objective or a finite-difference gradient was not finite at a
    /// point the search had to use.
    BadGradient,
}

/// Result of [`bfgs`].
#[derive(Debug, Clone)]
pub struct Minimum {
    /// Best point found.
    pub x: Vec<f64>,
    /// How the search ended.
    pub status: Status,
    /// Objective evaluations, gradient evaluations included.
    pub evals: usize,
}

/// Central-difference gradient with step `eps` (R's `ndeps`); `None` if a
/// value is not finite.
fn gradient(
    f: &mut dyn FnMut(&[f64]) -> f64,
    x: &[f64],
    eps: f64,
    evals: &mut usize,
) -> Option<Vec<f64>> {
    let mut p = x.to_vec();
    let mut g = vec![0.0; x.len()];
    for i in 0..x.len() {
        p[i] = x[i] + eps;
        let v1 = f(&p);
        p[i] = x[i] - eps;
        let v2 = f(&p);
        p[i] = x[i];
        *evals += 2;
        g[i] = (v1 - v2) / (2.0 * eps);
        if !g[i].is_finite() {
            return None;
        }
    }
    Some(g)
}

/// Minimises `f` from `x0` with R's BFGS (`reltol` 1e-8, `abstol` −∞,
/// `maxit` iterations, numerical gradient with step `eps`).
pub fn bfgs(f: &mut dyn FnMut(&[f64]) -> f64, x0: &[f64], maxit: usize, eps: f64) -> Minimum {
    const STEPREDN: f64 = 0.2;
    const ACCTOL: f64 = 0.0001;
    const RELTEST: f64 = 10.0;
    const RELTOL: f64 = 1e-8;
    let n = x0.len();
    let mut b = x0.to_vec();
    let mut evals = 1usize;
    let mut fmin = f(&b);
    if n == 0 || !fmin.is_finite() {
        let status = if fmin.is_finite() {
            Status::Converged
        } else {
            Status::BadGradient
        };
        return Minimum {
            x: b,
            status,
            evals,
        };
    }
    let Some(mut g) = gradient(f, &b, eps, &mut evals) else {
        return Minimum {
            x: b,
            status: Status::BadGradient,
            evals,
        };
    };
    let mut hinv = vec![vec![0.0; n]; n];
    let mut t = vec![0.0; n];
    let mut xs = vec![0.0; n];
    let mut c = vec![0.0; n];
    let mut iter = 1usize;
    let mut gradcount = 1usize;
    let mut ilast = gradcount;
    loop {
        if ilast == gradcount {
            for (i, row) in hinv.iter_mut().enumerate() {
                row.iter_mut().for_each(|v| *v = 0.0);
                row[i] = 1.0;
            }
        }
        xs.copy_from_slice(&b);
        c.copy_from_slice(&g);
        let mut gradproj = 0.0;
        for i in 0..n {
            let s: f64 = -(0..n).map(|j| hinv[i][j] * g[j]).sum::<f64>();
            t[i] = s;
            gradproj += s * g[i];
        }
        let mut count;
        if gradproj < 0.0 {
            let mut steplength = 1.0;
            let mut accpoint = false;
            let mut fval = fmin;
            loop {
                count = 0;
                for i in 0..n {
                    b[i] = xs[i] + steplength * t[i];
                    if RELTEST + xs[i] == RELTEST + b[i] {
                        count += 1;
                    }
                }
                if count < n {
                    fval = f(&b);
                    evals += 1;
                    accpoint = fval.is_finite() && fval <= fmin + gradproj * steplength * ACCTOL;
                    if !accpoint {
                        steplength *= STEPREDN;
                    }
                }
                if count == n || accpoint {
                    break;
                }
            }
            let enough = (fval - fmin).abs() > RELTOL * (fmin.abs() + RELTOL);
            if !enough {
                count = n;
                if fval.is_finite() && fval < fmin {
                    fmin = fval;
                } else {
                    b.copy_from_slice(&xs);
                }
            }
            if count < n {
                fmin = fval;
                match gradient(f, &b, eps, &mut evals) {
                    Some(gn) => g = gn,
                    None => {
                        return Minimum {
                            x: b,
                            status: Status::BadGradient,
                            evals,
                        }
                    }
                }
                gradcount += 1;
                iter += 1;
                let mut d1 = 0.0;
                for i in 0..n {
                    t[i] *= steplength;
                    c[i] = g[i] - c[i];
                    d1 += t[i] * c[i];
                }
                if d1 > 0.0 {
                    let mut d2 = 0.0;
                    for i in 0..n {
                        let s: f64 = (0..n).map(|j| hinv[i][j] * c[j]).sum();
                        xs[i] = s;
                        d2 += s * c[i];
                    }
                    d2 = 1.0 + d2 / d1;
                    for i in 0..n {
                        for j in 0..n {
                            hinv[i][j] += (d2 * t[i] * t[j] - xs[i] * t[j] - t[i] * xs[j]) / d1;
                        }
                    }
                } else {
                    ilast = gradcount;
                }
            } else if ilast < gradcount {
                count = 0;
                ilast = gradcount;
            }
        } else {
            count = 0;
            if ilast == gradcount {
                count = n;
            } else {
                ilast = gradcount;
            }
        }
        if iter >= maxit {
            return Minimum {
                x: b,
                status: Status::MaxIter,
                evals,
            };
        }
        if gradcount - ilast > 2 * n {
            ilast = gradcount;
        }
        if count == n && ilast == gradcount {
            break;
        }
    }
    Minimum {
        x: b,
        status: Status::Converged,
        evals,
    }
}
