//! Order-of-differencing tests of the Hyndman–Khandakar algorithm, as
//! statsforecast's `ndiffs` / `nsdiffs` run them: the KPSS level-stationarity
//! test for `d`, and the seasonal-strength heuristic (STL decomposition,
//! strength > 0.64) for `D`.

/// statsforecast's `is_constant` with a rounding tolerance: every value
/// equals the first within `1e-12` of the series' scale.
pub fn is_constant(x: &[f64]) -> bool {
    let Some(&x0) = x.first() else {
        return true;
    };
    let scale = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    x.iter().all(|v| (v - x0).abs() <= 1e-12 * scale)
}

/// KPSS statistic for level stationarity with `lags` Bartlett-weighted
/// autocovariances (statsmodels `kpss(x, "c", nlags)`, urca `ur.kpss(type =
/// "mu")`).
pub fn kpss_stat(x: &[f64], lags: usize) -> f64 {
    let n = x.len();
    let mean = x.iter().sum::<f64>() / n as f64;
    let e: Vec<f64> = x.iter().map(|v| v - mean).collect();
    let mut cum = 0.0;
    let mut eta = 0.0;
    for v in &e {
        cum += v;
        eta += cum * cum;
    }
    eta /= (n * n) as f64;
    let mut s = e.iter().map(|v| v * v).sum::<f64>();
    for i in 1..=lags.min(n.saturating_sub(1)) {
        let prod: f64 = (i..n).map(|t| e[t] * e[t - i]).sum();
        s += 2.0 * prod * (1.0 - i as f64 / (lags as f64 + 1.0));
    }
    s /= n as f64;
    eta / s
}

/// 5% critical value of the KPSS level test (Kwiatkowski et al. 1992,
/// table 1): p < 0.05 iff the statistic exceeds it.
const KPSS_CRIT_5PCT: f64 = 0.463;

/// Whether the KPSS test rejects level stationarity at 5% with
/// statsforecast's lag choice `floor(3·sqrt(n)/13)`.
fn kpss_rejects(x: &[f64]) -> bool {
    let lags = (3.0 * (x.len() as f64).sqrt() / 13.0).floor() as usize;
    let s = kpss_stat(x, lags);
    s.is_finite() && s > KPSS_CRIT_5PCT
}

/// Number of first differences (≤ `max_d`) for stationarity (`ndiffs`):
/// difference while the KPSS test rejects.
pub fn ndiffs(x: &[f64], max_d: usize) -> usize {
    let mut x = x.to_vec();
    let mut d = 0;
    if x.len() < 2 || is_constant(&x) {
        return 0;
    }
    let mut dodiff = kpss_rejects(&x);
    while dodiff && d < max_d {
        d += 1;
        x = x.windows(2).map(|p| p[1] - p[0]).collect();
        if x.len() < 2 || is_constant(&x) {
            return d;
        }
        dodiff = kpss_rejects(&x);
    }
    d
}

/// Seasonal differences (0 or 1) by the seasonal-strength heuristic
/// (`nsdiffs(test = "seas")`): 1 if the strength of [`seasonal_strength`]
/// exceeds 0.64.
pub fn nsdiffs(x: &[f64], m: usize) -> usize {
    if m < 2 || m >= x.len() || is_constant(x) {
        return 0;
    }
    usize::from(seasonal_strength(x, m) > 0.64)
}

/// Strength of seasonality `max(0, 1 − Var(R)/Var(R + S))` of an STL
/// decomposition (statsforecast `mstl` with one period: statsmodels STL,
/// seasonal window 11, seasonal degree 0, other settings default).
pub fn seasonal_strength(x: &[f64], m: usize) -> f64 {
    let (season, trend) = stl(x, m, 11);
    let rem: Vec<f64> = x
        .iter()
        .zip(&season)
        .zip(&trend)
        .map(|((v, s), t)| v - s - t)
        .collect();
    let rs: Vec<f64> = rem.iter().zip(&season).map(|(r, s)| r + s).collect();
    let var = |v: &[f64]| {
        let n = v.len() as f64;
        let mu = v.iter().sum::<f64>() / n;
        v.iter().map(|a| (a - mu) * (a - mu)).sum::<f64>() / (n - 1.0)
    };
    let (vr, vrs) = (var(&rem), var(&rs));
    if vrs.is_nan() || vrs <= 0.0 {
        return 0.0;
    }
    (1.0 - vr / vrs).clamp(0.0, 1.0)
}

/// Loess estimate at `xs` (1-based) from `y[nleft−1..nright]` (statsmodels
/// `_est`; no robustness weights). `None` when all weights vanish.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // a port of the Fortran
fn est(
    y: &[f64],
    n: usize,
    len: usize,
    ideg: usize,
    xs: f64,
    nleft: usize,
    nright: usize,
    w: &mut [f64],
) -> Option<f64> {
    let rng = n as f64 - 1.0;
    let mut h = (xs - nleft as f64).max(nright as f64 - xs);
    if len > n {
        h += ((len - n) / 2) as f64;
    }
    let h9 = 0.999 * h;
    let h1 = 0.001 * h;
    let mut a = 0.0;
    for j in nleft - 1..nright {
        w[j] = 0.0;
        let r = (j as f64 + 1.0 - xs).abs();
        if r <= h9 {
            w[j] = if r <= h1 {
                1.0
            } else {
                (1.0 - (r / h).powi(3)).powi(3)
            };
            a += w[j];
        }
    }
    if a <= 0.0 {
        return None;
    }
    for wj in &mut w[nleft - 1..nright] {
        *wj /= a;
    }
    if h > 0.0 && ideg > 0 {
        let a: f64 = (nleft - 1..nright).map(|j| w[j] * (j as f64 + 1.0)).sum();
        let mut b = xs - a;
        let c: f64 = (nleft - 1..nright)
            .map(|j| w[j] * (j as f64 + 1.0 - a).powi(2))
            .sum();
        if c.sqrt() > 0.001 * rng {
            b /= c;
            for j in nleft - 1..nright {
                w[j] *= b * (j as f64 + 1.0 - a) + 1.0;
            }
        }
    }
    Some((nleft - 1..nright).map(|j| w[j] * y[j]).sum())
}

/// Loess smoothing of `y[..n]` into `ys[..n]` with window `len` (statsmodels
/// `_ess` with jump 1).
fn ess(y: &[f64], n: usize, len: usize, ideg: usize, ys: &mut [f64], w: &mut [f64]) {
    if n < 2 {
        ys[0] = y[0];
        return;
    }
    if len >= n {
        for i in 0..n {
            ys[i] = est(y, n, len, ideg, i as f64 + 1.0, 1, n, w).unwrap_or(y[i]);
        }
    } else {
        let nsh = (len + 2) / 2;
        let (mut nleft, mut nright) = (1, len);
        for i in 0..n {
            if i + 1 > nsh && nright != n {
                nleft += 1;
                nright += 1;
            }
            ys[i] = est(y, n, len, ideg, i as f64 + 1.0, nleft, nright, w).unwrap_or(y[i]);
        }
    }
}

/// Moving average of length `len` over `x[..n]` (`n − len + 1` values).
fn ma(x: &[f64], n: usize, len: usize, ave: &mut [f64]) {
    let flen = len as f64;
    let mut v: f64 = x[..len].iter().sum();
    ave[0] = v / flen;
    for j in 1..n - len + 1 {
        v += x[len + j - 1] - x[j - 1];
        ave[j] = v / flen;
    }
}

/// STL decomposition (Cleveland et al. 1990) as statsmodels' `STL(x,
/// period, seasonal, seasonal_deg=0).fit()` computes it: trend window
/// `nextodd(ceil(1.5·period/(1 − 1.5/seasonal)))`, low-pass window
/// `nextodd(period + 1)`, degrees 0/1/1, jumps 1, 5 inner iterations, no
/// robustness iterations. Returns `(seasonal, trend)`.
pub fn stl(y: &[f64], np: usize, ns: usize) -> (Vec<f64>, Vec<f64>) {
    let n = y.len();
    let mut nt = (1.5 * np as f64 / (1.0 - 1.5 / ns as f64)).ceil() as usize;
    nt += usize::from(nt.is_multiple_of(2));
    let mut nl = np + 1;
    nl += usize::from(nl.is_multiple_of(2));
    let (isdeg, itdeg, ildeg) = (0, 1, 1);
    let big = n + 2 * np;
    let mut trend = vec![0.0; n];
    let mut season = vec![0.0; n];
    let mut work: Vec<Vec<f64>> = vec![vec![0.0; big]; 5];
    let mut wbuf = vec![0.0; big];
    for _ in 0..5 {
        for i in 0..n {
            work[0][i] = y[i] - trend[i];
        }
        // Cycle-subseries smoothing (`_ss`) into work[1] (n + 2·np values).
        {
            let mut w1 = vec![0.0; big];
            let mut w2 = vec![0.0; big];
            for j in 0..np {
                if j >= n {
                    break;
                }
                let k = (n - (j + 1)) / np + 1;
                for i in 0..k {
                    w1[i] = work[0][i * np + j];
                }
                ess(&w1, k, ns, isdeg, &mut w2[1..], &mut wbuf);
                let nright = ns.min(k);
                w2[0] = est(&w1, k, ns, isdeg, 0.0, 1, nright, &mut wbuf).unwrap_or(w2[1]);
                let nleft = (k + 1).saturating_sub(ns).max(1);
                w2[k + 1] =
                    est(&w1, k, ns, isdeg, k as f64 + 1.0, nleft, k, &mut wbuf).unwrap_or(w2[k]);
                for mm in 0..k + 2 {
                    work[1][mm * np + j] = w2[mm];
                }
            }
        }
        // Low-pass filter (`_fts`) of work[1] into work[2].
        {
            let nn = big;
            let (w0, rest) = work.split_at_mut(1);
            let (w1, rest) = rest.split_at_mut(1);
            let w2 = &mut rest[0];
            ma(&w1[0], nn, np, w2);
            ma(w2, nn - np + 1, np, &mut w0[0]);
            ma(&w0[0], nn - 2 * np + 2, 3, w2);
        }
        {
            let (w0, rest) = work.split_at_mut(1);
            let w2 = &rest[1];
            ess(w2, n, nl, ildeg, &mut w0[0], &mut wbuf);
        }
        for i in 0..n {
            season[i] = work[1][np + i] - work[0][i];
            work[0][i] = y[i] - season[i];
        }
        let w0 = work[0].clone();
        ess(&w0, n, nt, itdeg, &mut trend, &mut wbuf);
    }
    (season, trend)
}
