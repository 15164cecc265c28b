//! Regression trees on binned features, and the two ensembles built from
//! them: a random forest (bootstrap + feature subsampling per split) and
//! gradient boosting (squared loss, shrinkage, row subsampling).
//!
//! Binning: each feature's distinct values become its bins when there are at
//! most `max_bins` of them; otherwise `max_bins` quantile bins. Thresholds
//! are midpoints between neighbouring values (between the neighbouring
//! distinct values at the quantile positions when binned), so a split "bin ≤
//! b" on the training codes is the split "value ≤ threshold" on raw values.
//! With at most `max_bins` distinct values per feature the search is the
//! exact CART search over every threshold, and the tree is scikit-learn's
//! `DecisionTreeRegressor` (squared error) up to ties between equally good
//! splits (sklearn visits features in a random order, we in index order) —
//! the fixture tests check it.
//!
//! Split criterion (as sklearn's proxy): maximise `S_L²/n_L + S_R²/n_R` over
//! the candidate splits, strictly better wins (first feature, then lowest
//! threshold on ties). A node is a leaf at `max_depth`, under
//! `min_samples_split` rows, under `2·min_samples_leaf` rows, when its
//! variance is ≤ `f64::EPSILON`, or when no candidate split leaves
//! `min_samples_leaf` rows on both sides. Leaves predict the mean target of
//! their rows (bootstrap duplicates counted).
//!
//! Everything is deterministic: randomness comes only from [`Rng`]
//! (SplitMix64) seeded by the caller, so the same inputs and seed give the
//! same model on every platform and crate version.

/// SplitMix64: small, fast, and fixed forever (unlike `rand`'s `StdRng`,
/// whose algorithm may change between versions), so seeded forecasts are
/// reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`), by multiply-high (Lemire, no rejection:
    /// the bias is below 2⁻³² for the sizes used here).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// sklearn's threshold between neighbouring values: the midpoint, unless
/// rounding puts it on the upper value.
fn midpoint(a: f64, b: f64) -> f64 {
    let m = a / 2.0 + b / 2.0;
    if m >= b || !m.is_finite() {
        a
    } else {
        m
    }
}

/// Binning of one feature (see the module docs): value `v` has code
/// `#{thresholds < v}`, i.e. the first bin `b` with `v ≤ thresholds[b]`
/// (the last bin when there is none). Returns the thresholds and, when every
/// distinct value has its own bin, those values.
fn thresholds(col: &[f64], max_bins: usize) -> (Vec<f64>, Option<Vec<f64>>) {
    let mut sorted: Vec<f64> = col.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut distinct = sorted.clone();
    distinct.dedup();
    if distinct.len() <= max_bins {
        let th = distinct.windows(2).map(|w| midpoint(w[0], w[1])).collect();
        return (th, Some(distinct));
    }
    let n = sorted.len();
    let mut out: Vec<f64> = Vec::with_capacity(max_bins - 1);
    for j in 1..max_bins {
        let i = j * n / max_bins;
        let (lo, hi) = (sorted[i - 1], sorted[i]);
        let t = if lo < hi { midpoint(lo, hi) } else { lo };
        if out.last().is_none_or(|&p| t > p) && t < sorted[n - 1] {
            out.push(t);
        }
    }
    (out, None)
}

/// A feature matrix binned for tree building: codes column by column, and
/// the thresholds that map raw values to codes.
#[derive(Debug, Clone)]
pub struct Binned {
    pub rows: usize,
    /// `codes[f * rows + i]`: the bin of row `i`, feature `f`.
    codes: Vec<u8>,
    /// Per feature, the upper bounds of its bins but the last.
    thresholds: Vec<Vec<f64>>,
    /// Per feature, the value of each bin when every distinct value has
    /// its own (exact mode).
    values: Vec<Option<Vec<f64>>>,
}

impl Binned {
    /// Bins a row-major matrix of `rows × features` (`x.len()` must be
    /// `rows * features`; non-finite values should not occur and bin as the
    /// largest). `max_bins` is clamped to `2..=256`.
    pub fn new(x: &[f64], features: usize, max_bins: usize) -> Self {
        let max_bins = max_bins.clamp(2, 256);
        let rows = x.len().checked_div(features).unwrap_or(0);
        let mut codes = vec![0u8; rows * features];
        let mut ths = Vec::with_capacity(features);
        let mut values = Vec::with_capacity(features);
        let mut col = vec![0.0; rows];
        for f in 0..features {
            for i in 0..rows {
                col[i] = x[i * features + f];
            }
            let (th, vals) = thresholds(&col, max_bins);
            for i in 0..rows {
                codes[f * rows + i] = th.partition_point(|&t| t < col[i]) as u8;
            }
            ths.push(th);
            values.push(vals);
        }
        Binned {
            rows,
            codes,
            thresholds: ths,
            values,
        }
    }

    /// The raw-value threshold of a split between non-empty bins `b < c`
    /// of a node (bins between them empty there): as sklearn, the midpoint
    /// between the node's neighbouring values in exact mode; else the
    /// midpoint of the bin edges `thresholds[b]` and `thresholds[c − 1]`.
    /// Either way training rows with code ≤ `b` are exactly those with
    /// value ≤ threshold.
    fn split_threshold(&self, f: usize, b: usize, c: usize) -> f64 {
        match &self.values[f] {
            Some(v) => midpoint(v[b], v[c]),
            None => {
                let th = &self.thresholds[f];
                let (lo, hi) = (th[b], th[c - 1]);
                if lo < hi {
                    midpoint(lo, hi)
                } else {
                    lo
                }
            }
        }
    }

    pub fn features(&self) -> usize {
        self.thresholds.len()
    }

    fn column(&self, f: usize) -> &[u8] {
        &self.codes[f * self.rows..(f + 1) * self.rows]
    }

    fn bins(&self, f: usize) -> usize {
        self.thresholds[f].len() + 1
    }
}

/// Growth limits of one tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeParams {
    /// Depth limit (the root is depth 0); `usize::MAX` for none.
    pub max_depth: usize,
    pub min_samples_split: usize,
    pub min_samples_leaf: usize,
    /// Features tried per split (sampled without replacement per node;
    /// features constant in the node do not count). `0` or ≥ the feature
    /// count: all, in index order.
    pub max_features: usize,
}

impl Default for TreeParams {
    /// sklearn's `DecisionTreeRegressor` defaults.
    fn default() -> Self {
        TreeParams {
            max_depth: usize::MAX,
            min_samples_split: 2,
            min_samples_leaf: 1,
            max_features: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Node {
    Leaf(f64),
    Split {
        feature: u32,
        /// Rows with code ≤ `bin` (raw value ≤ `threshold`) go left.
        bin: u8,
        threshold: f64,
        left: u32,
        right: u32,
    },
}

/// A fitted regression tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    nodes: Vec<Node>,
}

/// Reusable buffers for tree building.
#[derive(Debug, Default)]
struct Scratch {
    sum: Vec<f64>,
    cnt: Vec<u32>,
    order: Vec<usize>,
}

impl Tree {
    /// Grows a tree on `rows` (indices into `data`, repeats allowed: a
    /// bootstrap sample) fitting targets `y` (indexed like `data`'s rows).
    /// `rng` draws the features tried at each split when `max_features`
    /// is below the feature count.
    pub fn fit(data: &Binned, y: &[f64], rows: &mut [u32], p: &TreeParams, rng: &mut Rng) -> Tree {
        let mut tree = Tree { nodes: Vec::new() };
        let mut scratch = Scratch {
            sum: vec![0.0; 256],
            cnt: vec![0; 256],
            order: (0..data.features()).collect(),
        };
        // Depth-first: (node index, rows range, depth).
        tree.nodes.push(Node::Leaf(0.0));
        let mut stack = vec![(0usize, 0usize, rows.len(), 0usize)];
        while let Some((id, start, end, depth)) = stack.pop() {
            let part = &mut rows[start..end];
            let (n, s, ss) = part.iter().fold((0usize, 0.0, 0.0), |(n, s, ss), &r| {
                let v = y[r as usize];
                (n + 1, s + v, ss + v * v)
            });
            let mean = s / n.max(1) as f64;
            tree.nodes[id] = Node::Leaf(mean);
            let impurity = ss / n as f64 - mean * mean;
            if depth >= p.max_depth
                || n < p.min_samples_split.max(2)
                || n < 2 * p.min_samples_leaf.max(1)
                || impurity <= f64::EPSILON
            {
                continue;
            }
            let Some((feature, bin, next)) = best_split(data, y, part, s, p, rng, &mut scratch)
            else {
                continue;
            };
            // Partition: code ≤ bin to the front.
            let col = data.column(feature);
            let mut mid = 0;
            for i in 0..part.len() {
                if col[part[i] as usize] <= bin {
                    part.swap(i, mid);
                    mid += 1;
                }
            }
            let left = tree.nodes.len();
            tree.nodes.push(Node::Leaf(0.0));
            tree.nodes.push(Node::Leaf(0.0));
            tree.nodes[id] = Node::Split {
                feature: feature as u32,
                bin,
                threshold: data.split_threshold(feature, bin as usize, next),
                left: left as u32,
                right: left as u32 + 1,
            };
            // Right pushed first so the left subtree is grown first.
            stack.push((left + 1, start + mid, end, depth + 1));
            stack.push((left, start, start + mid, depth + 1));
        }
        tree
    }

    /// Prediction for one raw feature row.
    pub fn predict(&self, x: &[f64]) -> f64 {
        let mut i = 0;
        loop {
            match self.nodes[i] {
                Node::Leaf(v) => return v,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                    ..
                } => {
                    i = if x[feature as usize] <= threshold {
                        left
                    } else {
                        right
                    } as usize
                }
            }
        }
    }

    /// Prediction for training row `row` of `data` (by codes).
    fn predict_binned(&self, data: &Binned, row: usize) -> f64 {
        let mut i = 0;
        loop {
            match self.nodes[i] {
                Node::Leaf(v) => return v,
                Node::Split {
                    feature,
                    bin,
                    left,
                    right,
                    ..
                } => {
                    i = if data.codes[feature as usize * data.rows + row] <= bin {
                        left
                    } else {
                        right
                    } as usize
                }
            }
        }
    }

    /// Number of nodes (splits and leaves).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// The best split of a node's rows over the candidate features, as
/// (feature, last non-empty bin going left, first non-empty bin going
/// right); `None` when no candidate is valid.
fn best_split(
    data: &Binned,
    y: &[f64],
    rows: &[u32],
    total: f64,
    p: &TreeParams,
    rng: &mut Rng,
    sc: &mut Scratch,
) -> Option<(usize, u8, usize)> {
    let nf = data.features();
    let n = rows.len();
    let min_leaf = p.min_samples_leaf.max(1);
    let sample = p.max_features > 0 && p.max_features < nf;
    if !sample {
        for (i, o) in sc.order.iter_mut().enumerate() {
            *o = i;
        }
    }
    let mut best: Option<(f64, usize, u8, usize)> = None;
    let mut tried = 0;
    for k in 0..nf {
        if sample {
            if tried >= p.max_features {
                break;
            }
            // Fisher–Yates step: draw the k-th feature from the rest.
            let j = k + rng.below(nf - k);
            sc.order.swap(k, j);
        }
        let f = sc.order[k];
        let bins = data.bins(f);
        let (sum, cnt) = (&mut sc.sum[..bins], &mut sc.cnt[..bins]);
        sum.fill(0.0);
        cnt.fill(0);
        let col = data.column(f);
        for &r in rows {
            let b = col[r as usize] as usize;
            sum[b] += y[r as usize];
            cnt[b] += 1;
        }
        if cnt.iter().filter(|&&c| c > 0).count() < 2 {
            continue; // constant in this node: does not count as tried
        }
        tried += 1;
        // Candidate splits lie between consecutive non-empty bins.
        let (mut nl, mut sl) = (0usize, 0.0);
        let mut prev: Option<usize> = None;
        for b in 0..bins {
            if cnt[b] == 0 {
                continue;
            }
            if let Some(a) = prev {
                let nr = n - nl;
                if nl >= min_leaf && nr >= min_leaf {
                    let sr = total - sl;
                    let proxy = sl * sl / nl as f64 + sr * sr / nr as f64;
                    if best.is_none_or(|(bp, ..)| proxy > bp) {
                        best = Some((proxy, f, a as u8, b));
                    }
                }
            }
            nl += cnt[b] as usize;
            sl += sum[b];
            prev = Some(b);
        }
    }
    best.map(|(_, f, b, c)| (f, b, c))
}

/// Random forest settings (sklearn's `RandomForestRegressor` meanings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForestParams {
    pub trees: usize,
    pub tree: TreeParams,
    /// Bootstrap sample of `rows` draws with replacement per tree; without
    /// it every tree sees every row once (then only `max_features` varies).
    pub bootstrap: bool,
    pub max_bins: usize,
    pub seed: u64,
}

/// Gradient boosting settings (sklearn's `GradientBoostingRegressor`
/// meanings, squared loss).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GbmParams {
    pub trees: usize,
    pub learning_rate: f64,
    /// Fraction of rows (drawn without replacement) each tree is fitted on;
    /// the in-sample update still covers every row, as in sklearn.
    pub subsample: f64,
    pub tree: TreeParams,
    pub max_bins: usize,
    pub seed: u64,
}

/// A fitted ensemble: `base + scale · Σ tree(x)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ensemble {
    base: f64,
    scale: f64,
    trees: Vec<Tree>,
}

impl Ensemble {
    pub fn predict(&self, x: &[f64]) -> f64 {
        self.base + self.scale * self.trees.iter().map(|t| t.predict(x)).sum::<f64>()
    }

    pub fn trees(&self) -> &[Tree] {
        &self.trees
    }

    /// Random forest on a binned matrix: the mean of `trees` trees, each
    /// fitted on its own bootstrap sample with its own stream of the seed.
    pub fn forest(data: &Binned, y: &[f64], p: &ForestParams) -> Ensemble {
        let n = data.rows;
        let mut trees = Vec::with_capacity(p.trees);
        let mut rows = vec![0u32; n];
        for t in 0..p.trees {
            let mut rng = Rng::new(p.seed ^ (t as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            for (i, r) in rows.iter_mut().enumerate() {
                *r = if p.bootstrap {
                    rng.below(n) as u32
                } else {
                    i as u32
                };
            }
            trees.push(Tree::fit(data, y, &mut rows, &p.tree, &mut rng));
        }
        Ensemble {
            base: 0.0,
            scale: 1.0 / p.trees.max(1) as f64,
            trees,
        }
    }

    /// Gradient boosting with squared loss: starts at the mean of `y`, then
    /// each tree fits the current residuals (on a row subsample) and the
    /// prediction moves by `learning_rate` times its output.
    pub fn boosted(data: &Binned, y: &[f64], p: &GbmParams) -> Ensemble {
        let n = data.rows;
        let base = y.iter().sum::<f64>() / n.max(1) as f64;
        let mut pred = vec![base; n];
        let mut resid = vec![0.0; n];
        let mut rng = Rng::new(p.seed);
        let take = if p.subsample.is_nan() || p.subsample <= 0.0 || p.subsample >= 1.0 {
            n
        } else {
            ((p.subsample * n as f64) as usize).clamp(1, n)
        };
        let mut all: Vec<u32> = (0..n as u32).collect();
        let mut trees = Vec::with_capacity(p.trees);
        for _ in 0..p.trees {
            for i in 0..n {
                resid[i] = y[i] - pred[i];
            }
            if take < n {
                // Partial Fisher–Yates: the first `take` rows are a sample
                // without replacement.
                for k in 0..take {
                    let j = k + rng.below(n - k);
                    all.swap(k, j);
                }
            }
            let mut rows: Vec<u32> = all[..take].to_vec();
            let tree = Tree::fit(data, &resid, &mut rows, &p.tree, &mut rng);
            for (i, v) in pred.iter_mut().enumerate() {
                *v += p.learning_rate * tree.predict_binned(data, i);
            }
            trees.push(tree);
        }
        Ensemble {
            base,
            scale: p.learning_rate,
            trees,
        }
    }
}
