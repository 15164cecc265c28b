//! Recurrent cells written from the lecture equations, on batched tensors.
//!
//! Weight layout follows PyTorch (`w_ih: [G*H, in]`, `w_hh: [G*H, H]`, gate
//! order i,f,g,o for LSTM and r,z,n for GRU), so weights trained in either
//! place mean the same thing. Every function steps a whole batch of keys at
//! once: rows are keys, nothing here loops over keys.
//!
//! - Elman RNN: h' = tanh(W_xh x + b_ih + W_hh h + b_hh)
//! - IRNN (Le, Jaitly & Hinton 2015): the same with ReLU, W_hh initialised to
//!   the identity and biases to zero.
//! - LSTM: i,f,o = sigma(.), g = tanh(.), c' = f*c + i*g, h' = o*tanh(c')
//! - GRU: r,z = sigma(.), n = tanh(W_in x + b_in + r*(W_hn h + b_hn)),
//!   h' = (1-z)*n + z*h
//!
//! Three ways to step: [`step`] (ATen's fused cells, safe under autograd,
//! used in training), [`step_inference`] (nothing recording gradients: one
//! gates buffer, activations in place) and, for the live LSTM, the
//! elementwise pass [`lstm_rows`] that `Network::step_in_place` runs on
//! the state where it lives (vectorised `f32` activations, absolute error
//! < 3e-7). All are checked against the equations by hand; they agree to
//! float rounding. [`f32_data`] / [`f32_data_mut`] are the one place that
//! views a tensor's memory as a Rust slice (contiguous CPU `f32` only).

use serde::{Deserialize, Serialize};
use tch::nn::{Init, Path};
use tch::Tensor;

use crate::config::{CellKind, Connections, OutputRecurrence};

impl CellKind {
    /// Gate blocks stacked in the weight matrices.
    pub fn gates(self) -> i64 {
        match self {
            // The transformer has no recurrent layers (see `attention`).
            CellKind::Rnn | CellKind::Irnn | CellKind::Transformer => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// Whether the cell carries a cell state besides h.
    pub fn has_cell_state(self) -> bool {
        self == CellKind::Lstm
    }
}

/// The weights of one recurrent layer.
#[derive(Debug)]
pub struct LayerWeights {
    pub w_ih: Tensor,
    pub w_hh: Tensor,
    pub b_ih: Tensor,
    pub b_hh: Tensor,
}

/// Shape of a stacked recurrent network (or of the transformer encoder,
/// where `hidden` is the model width and `layers` the encoder layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellShape {
    pub kind: CellKind,
    pub input: i64,
    pub hidden: i64,
    pub layers: i64,
    /// Past windows attended (transformer, or `attention`); 0 = none.
    /// Absent in artifacts written before attention existed.
    #[serde(default)]
    pub window: i64,
    /// Attention heads (transformer only; 0 otherwise).
    #[serde(default)]
    pub heads: i64,
    /// Temporal attention over the last `window` top hidden states
    /// (recurrent cells only).
    #[serde(default)]
    pub attention: bool,
    /// Where the fed-back previous output goes (`input`'s last feature):
    /// with `Output` the cells see `input - 1` features and the previous
    /// output reaches only the output layer. `None` in artifacts written
    /// before this field existed, where a trailing `prev_output` feature
    /// means output-to-hidden (an ordinary input, as it was).
    #[serde(default)]
    pub output_recurrence: OutputRecurrence,
    /// How stacked layers connect (absent in older artifacts: none).
    #[serde(default)]
    pub connections: Connections,
}

impl CellShape {
    /// A plain recurrent shape (no attention).
    pub fn recurrent(kind: CellKind, input: i64, hidden: i64, layers: i64) -> Self {
        CellShape {
            kind,
            input,
            hidden,
            layers,
            window: 0,
            heads: 0,
            attention: false,
            output_recurrence: OutputRecurrence::None,
            connections: Connections::None,
        }
    }
}

impl CellShape {
    /// Inputs the cells see at each step: `input` less the fed-back
    /// previous output when it goes to the output layer.
    pub fn cell_input(&self) -> i64 {
        self.input - (self.output_recurrence == OutputRecurrence::Output) as i64
    }

    /// Input width of recurrent layer `layer`: the cell input for the first;
    /// `hidden` above it, or with dense connections the cell input and every
    /// layer below (`cell_input + layer * hidden`).
    pub fn layer_input(&self, layer: i64) -> i64 {
        match (layer, self.connections) {
            (0, _) => self.cell_input(),
            (l, Connections::Dense) => self.cell_input() + l * self.hidden,
            _ => self.hidden,
        }
    }

    /// Width of what the head sees from the recurrent layers: every layer's
    /// state with dense connections, else the top's.
    pub fn top_width(&self) -> i64 {
        match self.connections {
            Connections::Dense => self.layers * self.hidden,
            _ => self.hidden,
        }
    }
}

impl LayerWeights {
    /// Creates (and registers) the weights of layer `layer` under `p`, with
    /// PyTorch's default init U(-1/sqrt(H), 1/sqrt(H)), except IRNN (identity
    /// recurrence, small input weights, zero bias) and LSTM (forget bias 1,
    /// the usual remedy for vanishing memory early in training).
    pub fn new(p: &Path, shape: CellShape, layer: i64) -> Self {
        Self::with_input(p, shape, layer, shape.layer_input(layer))
    }

    /// The same with an explicit input width of the layer.
    pub fn with_input(p: &Path, shape: CellShape, layer: i64, input: i64) -> Self {
        let h = shape.hidden;
        let g = shape.kind.gates();
        let k = 1.0 / (h as f64).sqrt();
        let u = Init::Uniform { lo: -k, up: k };
        let lp = p / format!("l{layer}");
        match shape.kind {
            CellKind::Irnn => {
                let w_ih = lp.var(
                    "w_ih",
                    &[h, input],
                    Init::Randn {
                        mean: 0.0,
                        stdev: 0.001,
                    },
                );
                let w_hh = lp.var_copy("w_hh", &Tensor::eye(h, (tch::Kind::Float, p.device())));
                let b_ih = lp.var("b_ih", &[h], Init::Const(0.0));
                let b_hh = lp.var("b_hh", &[h], Init::Const(0.0));
                LayerWeights {
                    w_ih,
                    w_hh,
                    b_ih,
                    b_hh,
                }
            }
            _ => {
                let w_ih = lp.var("w_ih", &[g * h, input], u);
                let w_hh = lp.var("w_hh", &[g * h, h], u);
                let b_ih = lp.var("b_ih", &[g * h], u);
                let b_hh = lp.var("b_hh", &[g * h], u);
                if shape.kind == CellKind::Lstm {
                    // Forget gate is block 1 (i, f, g, o): b_ih + b_hh = 1 there.
                    tch::no_grad(|| {
                        let _ = b_ih.narrow(0, h, h).fill_(0.5);
                        let _ = b_hh.narrow(0, h, h).fill_(0.5);
                    });
                }
                LayerWeights {
                    w_ih,
                    w_hh,
                    b_ih,
                    b_hh,
                }
            }
        }
    }
}

/// One step of one layer for a batch: `x: [n, in]`, `h: [n, H]`, `c: [n, H]`
/// (LSTM only). Returns `(h', c')`.
///
/// The equations of the module docs, computed by ATen's fused cells
/// (`lstm_cell`, `gru_cell`, `rnn_tanh_cell`, `rnn_relu_cell`): one libtorch
/// call per layer instead of a dozen, with the same weight layout and the
/// same gradients; the tests check them against the equations written out.
pub fn step(
    kind: CellKind,
    w: &LayerWeights,
    x: &Tensor,
    h: &Tensor,
    c: Option<&Tensor>,
) -> (Tensor, Option<Tensor>) {
    let (b_ih, b_hh) = (Some(&w.b_ih), Some(&w.b_hh));
    match kind {
        CellKind::Rnn => (x.rnn_tanh_cell(h, &w.w_ih, &w.w_hh, b_ih, b_hh), None),
        CellKind::Irnn => (x.rnn_relu_cell(h, &w.w_ih, &w.w_hh, b_ih, b_hh), None),
        CellKind::Lstm => {
            let c_prev = match c {
                Some(c) => c.shallow_clone(),
                None => h.zeros_like(),
            };
            let (h_new, c_new) = x.lstm_cell(&[h, &c_prev], &w.w_ih, &w.w_hh, b_ih, b_hh);
            (h_new, Some(c_new))
        }
        CellKind::Gru => (x.gru_cell(h, &w.w_ih, &w.w_hh, b_ih, b_hh), None),
        // Not a recurrent cell: `Network` runs it through `attention::Encoder`
        // and never calls this; the state passes through unchanged.
        CellKind::Transformer => (h.shallow_clone(), None),
    }
}

/// [`step`] for inference (nothing records gradients: the live stage),
/// with fewer `[n, G*H]` temporaries. LSTM, Elman and IRNN build their
/// gates in one buffer: `[x, 1] [W_ih, b_ih + b_hh]ᵀ` (one small product,
/// the biases folded in as a column of ones) plus `h W_hhᵀ` added in
/// place by `addmm_`, instead of ATen's CPU cell, which fills two gate
/// tensors (each starting from a copy of its bias) and adds them: 3 passes
/// over `[n, G*H]` instead of 9, and one allocation instead of two. The
/// LSTM then applies its activations in place on that buffer and forms
/// `c' = f*c + i*g` and `h' = o*tanh(c')` with `addcmul_` / `mul_` (two
/// `[n, H]` temporaries fewer). The same equations; the sums are
/// associated differently (biases first), so results agree with [`step`]
/// to float rounding (checked in the tests), not bit for bit. GRU keeps
/// ATen's cell (its candidate needs `W_hn h` apart from `W_in x`).
///
/// Must not be used while gradients are recorded: the in-place updates
/// are fine for inference but would hide values autograd saved.
pub fn step_inference(
    kind: CellKind,
    w: &LayerWeights,
    x: &Tensor,
    h: &Tensor,
    c: Option<&Tensor>,
) -> (Tensor, Option<Tensor>) {
    let gates = || {
        let n = x.size()[0];
        let ones = Tensor::ones([n, 1], (x.kind(), x.device()));
        let w_aug = Tensor::cat(&[&w.w_ih, &(&w.b_ih + &w.b_hh).unsqueeze(1)], 1);
        let mut gates = Tensor::cat(&[x, &ones], 1).mm(&w_aug.tr());
        let _ = gates.addmm_(h, &w.w_hh.tr());
        gates
    };
    match kind {
        CellKind::Rnn => (gates().tanh_(), None),
        CellKind::Irnn => (gates().relu_(), None),
        CellKind::Lstm => {
            let hd = h.size()[1];
            let g = gates();
            let _ = g.narrow(1, 0, 2 * hd).sigmoid_(); // i, f
            let _ = g.narrow(1, 2 * hd, hd).tanh_(); // g
            let _ = g.narrow(1, 3 * hd, hd).sigmoid_(); // o
            let (i, f) = (g.narrow(1, 0, hd), g.narrow(1, hd, hd));
            let (gg, o) = (g.narrow(1, 2 * hd, hd), g.narrow(1, 3 * hd, hd));
            let c_new = match c {
                Some(c) => {
                    let mut c_new = &f * c;
                    let _ = c_new.addcmul_(&i, &gg);
                    c_new
                }
                None => &i * &gg,
            };
            let mut h_new = c_new.tanh();
            h_new *= &o;
            (h_new, Some(c_new))
        }
        CellKind::Gru | CellKind::Transformer => step(kind, w, x, h, c),
    }
}

/// The elementwise half of the fused LSTM step ([`crate::model::Network`]'s
/// in-place step): for `rows` keys, from their pre-activation gates
/// `gates: [rows, 4H]` (i, f, g, o blocks, biases and both products already
/// summed), updates each key's cell and hidden state *in the state planes*
/// (`c_plane`, `h_plane`: `[slots, H]`, row `slots[r]` for key `r`) and
/// writes `h'` into `out` (`[rows, out_stride]`, columns `0..H`) for the
/// next layer or the head.
///
/// One pass over the gates instead of ATen's ~8 (sigmoid, tanh, sigmoid,
/// `f*c`, `i*g`, the add, `tanh(c')`, `o*`), each of those over `[rows, H]`
/// or `[rows, 4H]` with its own temporary, and no gather or scatter copy of
/// the state: the state is read and written where it lives. The
/// activations use [`sigmoid_f32`] / [`tanh_f32`] (absolute error below
/// 3e-7, checked in the tests), plain `f32` arithmetic the compiler
/// vectorises; with AVX2 present (checked at run time) the same loop is
/// compiled for 8 lanes.
///
/// Panics (slice bounds) if a slot is outside the planes; callers check.
pub(crate) fn lstm_rows(
    hd: usize,
    gates: &[f32],
    slots: &[i64],
    c_plane: &mut [f32],
    h_plane: &mut [f32],
    out: &mut [f32],
    out_stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above); the
            // function is the same safe Rust code compiled for it.
            #[allow(unsafe_code)]
            unsafe {
                lstm_rows_avx2(hd, gates, slots, c_plane, h_plane, out, out_stride)
            };
            return;
        }
    }
    lstm_rows_generic(hd, gates, slots, c_plane, h_plane, out, out_stride);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lstm_rows_avx2(
    hd: usize,
    gates: &[f32],
    slots: &[i64],
    c_plane: &mut [f32],
    h_plane: &mut [f32],
    out: &mut [f32],
    out_stride: usize,
) {
    lstm_rows_generic(hd, gates, slots, c_plane, h_plane, out, out_stride);
}

#[inline(always)]
fn lstm_rows_generic(
    hd: usize,
    gates: &[f32],
    slots: &[i64],
    c_plane: &mut [f32],
    h_plane: &mut [f32],
    out: &mut [f32],
    out_stride: usize,
) {
    for (r, &slot) in slots.iter().enumerate() {
        let s = slot as usize * hd;
        let g = &gates[r * 4 * hd..(r + 1) * 4 * hd];
        let (gi, rest) = g.split_at(hd);
        let (gf, rest) = rest.split_at(hd);
        let (gg, go) = rest.split_at(hd);
        let c = &mut c_plane[s..s + hd];
        let h = &mut h_plane[s..s + hd];
        let o = &mut out[r * out_stride..r * out_stride + hd];
        for k in 0..hd {
            let c_new = sigmoid_f32(gf[k]) * c[k] + sigmoid_f32(gi[k]) * tanh_f32(gg[k]);
            let h_new = sigmoid_f32(go[k]) * tanh_f32(c_new);
            c[k] = c_new;
            h[k] = h_new;
            o[k] = h_new;
        }
    }
}

/// `e^x` in `f32` (Cephes' `expf`: round to a power of two, a degree-6
/// polynomial on the remainder; ~1 ulp), branch-free so a loop over it
/// vectorises. The argument is clamped to [-87, 88] (results stay normal
/// and finite); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    // `if`s instead of `clamp`/`max`: a NaN compares false and passes.
    let x = if x > 88.0 { 88.0 } else { x };
    let x = if x < -87.0 { -87.0 } else { x };
    // Round x / ln 2 to the nearest integer n by the 1.5 * 2^23 trick: n
    // ends up in the low mantissa bits of `t`.
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let fx = t - MAGIC;
    // x - n ln 2, with ln 2 split in two for precision.
    let r = x - fx * 0.693_359_4 + fx * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from its exponent bits (n is within [-126, 127] after the clamp).
    e * f32::from_bits(((n + 127) << 23) as u32)
}

/// `1 / (1 + e^-x)` with [`exp_f32`].
#[inline(always)]
pub(crate) fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `tanh x = sign(x) (1 - e^-2|x|) / (1 + e^-2|x|)` with [`exp_f32`]:
/// absolute error ~1e-7 near 0 (where `1 - e^-2|x|` cancels), ~1 ulp
/// elsewhere.
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    let t = exp_f32(-2.0 * x.abs());
    ((1.0 - t) / (1.0 + t)).copysign(x)
}

/// The element count of a defined, contiguous CPU `f32` tensor (whose data
/// a slice may then cover), or None for any other tensor.
fn cpu_f32_len(t: &Tensor) -> Option<usize> {
    (t.defined()
        && t.kind() == tch::Kind::Float
        && t.device() == tch::Device::Cpu
        && t.is_contiguous())
    .then(|| t.numel())
}

/// The data of a contiguous CPU `f32` tensor as a mutable slice, or None
/// for any other tensor. The slice borrows the tensor mutably, so no other
/// safe access to this tensor (or a libtorch call through it) can overlap
/// it; callers must not hold a slice of one tensor while libtorch writes a
/// *view* of it through another handle.
pub(crate) fn f32_data_mut(t: &mut Tensor) -> Option<&mut [f32]> {
    let n = cpu_f32_len(t)?;
    if n == 0 {
        return Some(&mut []);
    }
    // SAFETY: the tensor is defined, contiguous, f32 and on the CPU, so its
    // data is `n` initialised, aligned f32s starting at `data_ptr` (which
    // includes the storage offset); the `&mut` borrow of the handle keeps
    // it (and its storage) alive for the slice's lifetime.
    #[allow(unsafe_code)]
    let s = unsafe { std::slice::from_raw_parts_mut(t.data_ptr().cast::<f32>(), n) };
    Some(s)
}

/// [`f32_data_mut`] for reading.
pub(crate) fn f32_data(t: &Tensor) -> Option<&[f32]> {
    let n = cpu_f32_len(t)?;
    if n == 0 {
        return Some(&[]);
    }
    // SAFETY: as in `f32_data_mut`; shared access only.
    #[allow(unsafe_code)]
    let s = unsafe { std::slice::from_raw_parts(t.data_ptr().cast::<f32>().cast_const(), n) };
    Some(s)
}

#[cfg(test)]
mod tests {
    //! The cells against the lecture equations computed by hand in plain
    //! Rust arithmetic from the same weights.
    use super::*;
    use tch::{nn, Device, Kind};

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn to_vec2(t: &Tensor) -> Vec<Vec<f64>> {
        Vec::<Vec<f64>>::try_from(&t.to_kind(Kind::Double)).unwrap()
    }

    /// y = W v + b for a row-major W given as rows.
    fn affine(w: &[Vec<f64>], v: &[f64], b: &[f64]) -> Vec<f64> {
        w.iter()
            .zip(b)
            .map(|(row, bi)| row.iter().zip(v).map(|(a, x)| a * x).sum::<f64>() + bi)
            .collect()
    }

    fn setup(kind: CellKind) -> (nn::VarStore, LayerWeights, Tensor, Tensor, Tensor) {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let shape = CellShape::recurrent(kind, 3, 4, 1);
        let w = LayerWeights::new(&vs.root(), shape, 0);
        let x = Tensor::randn([2, 3], (Kind::Float, Device::Cpu));
        let h = Tensor::randn([2, 4], (Kind::Float, Device::Cpu)) * 0.5;
        let c = Tensor::randn([2, 4], (Kind::Float, Device::Cpu)) * 0.5;
        (vs, w, x, h, c)
    }

    /// `(w_ih, w_hh, b_ih, b_hh)` as plain numbers.
    type Parts = (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<f64>, Vec<f64>);

    fn parts(w: &LayerWeights) -> Parts {
        (
            to_vec2(&w.w_ih),
            to_vec2(&w.w_hh),
            Vec::<f64>::try_from(&w.b_ih.to_kind(Kind::Double)).unwrap(),
            Vec::<f64>::try_from(&w.b_hh.to_kind(Kind::Double)).unwrap(),
        )
    }

    fn assert_close(got: &Tensor, want: &[Vec<f64>]) {
        let got = to_vec2(got);
        for (gr, wr) in got.iter().zip(want) {
            for (g, w) in gr.iter().zip(wr) {
                assert!((g - w).abs() < 1e-5, "got {g}, want {w}");
            }
        }
    }

    #[test]
    fn elman_and_irnn_match_the_equations() {
        for kind in [CellKind::Rnn, CellKind::Irnn] {
            let (_vs, w, x, h, _) = setup(kind);
            let (wih, whh, bih, bhh) = parts(&w);
            let (xs, hs) = (to_vec2(&x), to_vec2(&h));
            let want: Vec<Vec<f64>> = xs
                .iter()
                .zip(&hs)
                .map(|(xr, hr)| {
                    let a = affine(&wih, xr, &bih);
                    let b = affine(&whh, hr, &bhh);
                    a.iter()
                        .zip(b)
                        .map(|(p, q)| {
                            if kind == CellKind::Rnn {
                                (p + q).tanh()
                            } else {
                                (p + q).max(0.0)
                            }
                        })
                        .collect()
                })
                .collect();
            for f in [step, step_inference] {
                let (got, c) = f(kind, &w, &x, &h, None);
                assert!(c.is_none());
                assert_close(&got, &want);
            }
        }
    }

    #[test]
    fn irnn_starts_as_identity_recurrence() {
        let (_vs, w, _, _, _) = setup(CellKind::Irnn);
        let whh = to_vec2(&w.w_hh);
        for (i, row) in whh.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert_eq!(*v, if i == j { 1.0 } else { 0.0 });
            }
        }
    }

    #[test]
    fn lstm_matches_the_equations() {
        let (_vs, w, x, h, c) = setup(CellKind::Lstm);
        let (wih, whh, bih, bhh) = parts(&w);
        let (xs, hs, cs) = (to_vec2(&x), to_vec2(&h), to_vec2(&c));
        let n = 4;
        let mut want_h = Vec::new();
        let mut want_c = Vec::new();
        for r in 0..2 {
            let a = affine(&wih, &xs[r], &bih);
            let b = affine(&whh, &hs[r], &bhh);
            let z: Vec<f64> = a.iter().zip(&b).map(|(p, q)| p + q).collect();
            let (mut hr, mut cr) = (Vec::new(), Vec::new());
            for k in 0..n {
                let i = sigmoid(z[k]);
                let f = sigmoid(z[n + k]);
                let g = z[2 * n + k].tanh();
                let o = sigmoid(z[3 * n + k]);
                let c_new = f * cs[r][k] + i * g;
                cr.push(c_new);
                hr.push(o * c_new.tanh());
            }
            want_h.push(hr);
            want_c.push(cr);
        }
        for f in [step, step_inference] {
            let (got_h, got_c) = f(CellKind::Lstm, &w, &x, &h, Some(&c));
            assert_close(&got_h, &want_h);
            assert_close(&got_c.unwrap(), &want_c);
        }
    }

    /// The inference path against ATen's cells on a larger batch, with and
    /// without a cell state: float rounding apart, the same numbers.
    #[test]
    fn inference_path_matches_the_fused_cells() {
        for kind in [CellKind::Rnn, CellKind::Irnn, CellKind::Lstm, CellKind::Gru] {
            tch::manual_seed(11);
            let vs = nn::VarStore::new(Device::Cpu);
            let shape = CellShape::recurrent(kind, 5, 32, 1);
            let w = LayerWeights::new(&vs.root(), shape, 0);
            let x = Tensor::randn([300, 5], (Kind::Float, Device::Cpu));
            let h = Tensor::randn([300, 32], (Kind::Float, Device::Cpu)) * 0.5;
            let c = Tensor::randn([300, 32], (Kind::Float, Device::Cpu)) * 0.5;
            for c in [None, Some(&c)] {
                let (a, ac) = tch::no_grad(|| step(kind, &w, &x, &h, c));
                let (b, bc) = tch::no_grad(|| step_inference(kind, &w, &x, &h, c));
                let d = f64::try_from((&a - &b).abs().max()).unwrap();
                assert!(d < 1e-5, "{kind:?}: h differs by {d}");
                assert_eq!(ac.is_some(), bc.is_some());
                if let (Some(ac), Some(bc)) = (ac, bc) {
                    let d = f64::try_from((&ac - &bc).abs().max()).unwrap();
                    assert!(d < 1e-5, "{kind:?}: c differs by {d}");
                }
            }
        }
    }

    #[test]
    fn gru_matches_the_equations() {
        let (_vs, w, x, h, _) = setup(CellKind::Gru);
        let (wih, whh, bih, bhh) = parts(&w);
        let (xs, hs) = (to_vec2(&x), to_vec2(&h));
        let n = 4;
        let want: Vec<Vec<f64>> = (0..2)
            .map(|r| {
                let a = affine(&wih, &xs[r], &bih);
                let b = affine(&whh, &hs[r], &bhh);
                (0..n)
                    .map(|k| {
                        let rg = sigmoid(a[k] + b[k]);
                        let zg = sigmoid(a[n + k] + b[n + k]);
                        let ng = (a[2 * n + k] + rg * b[2 * n + k]).tanh();
                        (1.0 - zg) * ng + zg * hs[r][k]
                    })
                    .collect()
            })
            .collect();
        let (got, _) = step(CellKind::Gru, &w, &x, &h, None);
        assert_close(&got, &want);
    }

    /// `Network::step` without gradients (row chunks, the inference cells,
    /// the skip added in place) against the same step recording gradients
    /// (one call over all rows, ATen's cells): the same numbers to float
    /// rounding, over several chunks, with stacked layers and temporal
    /// attention.
    #[test]
    fn chunked_inference_step_matches_the_plain_step() {
        use crate::model::Network;
        let mut att = CellShape::recurrent(CellKind::Lstm, 4, 64, 1);
        att.window = 3;
        att.attention = true;
        for shape in [
            CellShape::recurrent(CellKind::Lstm, 4, 64, 2),
            CellShape::recurrent(CellKind::Gru, 4, 64, 1),
            CellShape::recurrent(CellKind::Rnn, 4, 64, 1),
            att,
        ] {
            let net = Network::new(shape, 6, Device::Cpu, 3);
            let skip = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
            tch::no_grad(|| net.skip_w.shallow_clone().copy_(&skip));
            let n = 2500; // more than two chunks at hidden 64
            let x = Tensor::randn([n, 4], (Kind::Float, Device::Cpu));
            let (h0, c0) = net.zero_state(n);
            let h = Tensor::randn(h0.size().as_slice(), (Kind::Float, Device::Cpu)) * 0.5;
            let c =
                c0.map(|c| Tensor::randn(c.size().as_slice(), (Kind::Float, Device::Cpu)) * 0.5);
            let (ya, ha, ca) = net.step(&x, &h, c.as_ref(), 0.0);
            assert!(ya.requires_grad(), "the reference records gradients");
            let (yb, hb, cb) = tch::no_grad(|| net.step(&x, &h, c.as_ref(), 0.0));
            let diff = |a: &Tensor, b: &Tensor| {
                assert_eq!(a.size(), b.size());
                f64::try_from((a.detach() - b).abs().max()).unwrap()
            };
            assert!(diff(&ya, &yb) < 1e-4, "{shape:?}: y");
            assert!(diff(&ha, &hb) < 1e-5, "{shape:?}: h");
            assert_eq!(ca.is_some(), cb.is_some());
            if let (Some(ca), Some(cb)) = (ca, cb) {
                assert!(diff(&ca, &cb) < 1e-5, "{shape:?}: c");
            }
        }
    }

    /// The fused step's activations against f64 over [-30, 30] (and at
    /// the clamp edges): absolute error below 3e-7; NaN stays NaN.
    #[test]
    fn fast_activations_are_accurate() {
        let mut worst = [0f64; 3];
        for i in -300_000..=300_000 {
            let x = i as f32 * 1e-4;
            let xd = x as f64;
            let e = (exp_f32(x) as f64 - xd.exp()).abs() / xd.exp();
            let s = (sigmoid_f32(x) as f64 - 1.0 / (1.0 + (-xd).exp())).abs();
            let t = (tanh_f32(x) as f64 - xd.tanh()).abs();
            worst = [worst[0].max(e), worst[1].max(s), worst[2].max(t)];
        }
        assert!(worst[0] < 3e-7, "exp relative error {}", worst[0]);
        assert!(worst[1] < 3e-7, "sigmoid error {}", worst[1]);
        assert!(worst[2] < 3e-7, "tanh error {}", worst[2]);
        for x in [
            -1e30f32,
            -100.0,
            100.0,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert!((sigmoid_f32(x) - if x > 0.0 { 1.0 } else { 0.0 }).abs() < 1e-30);
            assert_eq!(tanh_f32(x), x.signum());
        }
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(sigmoid_f32(f32::NAN).is_nan());
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    /// `lstm_rows` against the equations by hand, with the keys' state in
    /// scattered rows of a larger plane (untouched rows stay as they were).
    #[test]
    fn lstm_rows_matches_the_equations_in_place() {
        let hd = 3;
        let slots = [4i64, 1];
        let gates: Vec<f32> = (0..2 * 4 * hd)
            .map(|i| (i as f32 * 0.37).sin() * 2.0)
            .collect();
        let c0: Vec<f32> = (0..6 * hd).map(|i| (i as f32 * 0.71).cos()).collect();
        let h0: Vec<f32> = (0..6 * hd).map(|i| i as f32).collect();
        let (mut c, mut h) = (c0.clone(), h0.clone());
        let mut out = vec![-1f32; 2 * 5];
        lstm_rows(hd, &gates, &slots, &mut c, &mut h, &mut out, 5);
        for (r, &s) in slots.iter().enumerate() {
            let z = |b: usize, k: usize| gates[r * 4 * hd + b * hd + k] as f64;
            for k in 0..hd {
                let cp = c0[s as usize * hd + k] as f64;
                let cn = sigmoid(z(1, k)) * cp + sigmoid(z(0, k)) * z(2, k).tanh();
                let hn = sigmoid(z(3, k)) * cn.tanh();
                let at = s as usize * hd + k;
                assert!((c[at] as f64 - cn).abs() < 1e-6, "c {} vs {cn}", c[at]);
                assert!((h[at] as f64 - hn).abs() < 1e-6, "h {} vs {hn}", h[at]);
                assert_eq!(out[r * 5 + k], h[at]);
            }
            assert_eq!(&out[r * 5 + hd..r * 5 + 5], &[-1.0, -1.0]);
        }
        for s in [0usize, 2, 3, 5] {
            assert_eq!(&c[s * hd..(s + 1) * hd], &c0[s * hd..(s + 1) * hd]);
            assert_eq!(&h[s * hd..(s + 1) * hd], &h0[s * hd..(s + 1) * hd]);
        }
    }

    /// `StateStore::step` in place (the fused LSTM step, several chunks, a
    /// short last one) against gather -> `Network::step` recording
    /// gradients (ATen's cells) -> scatter, on a subset of the store's keys
    /// in scattered order: the same outputs and states to float rounding,
    /// the other keys' state untouched. One and two layers, and output-to-
    /// output recurrence (the cells see one input fewer than the skip).
    #[test]
    fn in_place_step_matches_gather_step_scatter() {
        use crate::config::OutputRecurrence;
        use crate::model::store::StateStore;
        use crate::model::Network;
        let mut fed = CellShape::recurrent(CellKind::Lstm, 5, 32, 1);
        fed.output_recurrence = OutputRecurrence::Output;
        for shape in [
            CellShape::recurrent(CellKind::Lstm, 4, 32, 1),
            CellShape::recurrent(CellKind::Lstm, 4, 16, 2),
            fed,
        ] {
            let net = Network::new(shape, 6, Device::Cpu, 5);
            let skip = Tensor::randn([6, shape.input], (Kind::Float, Device::Cpu));
            tch::no_grad(|| net.skip_w.shallow_clone().copy_(&skip));
            let mk = || {
                let mut s = StateStore::new(&net, 1, 4, 0, false);
                let slots: Vec<i64> = (0..3000).map(|i| s.slot(&format!("k{i}"))).collect();
                (s, slots)
            };
            let (mut a, all) = mk();
            let (mut b, _) = mk();
            // Random state everywhere, the same in both stores.
            tch::manual_seed(9);
            let (h0, c0) = net.zero_state(all.len() as i64);
            let h0 = Tensor::randn(h0.size().as_slice(), (Kind::Float, Device::Cpu)) * 0.5;
            let c0 = Tensor::randn(c0.unwrap().size().as_slice(), (Kind::Float, Device::Cpu));
            let all_t = Tensor::from_slice(&all);
            a.scatter(&all_t, &h0, Some(&c0));
            b.scatter(&all_t, &h0, Some(&c0));
            // Every third key, back to front.
            let pick: Vec<i64> = all.iter().rev().step_by(3).copied().collect();
            let pick_t = Tensor::from_slice(&pick);
            let x = Tensor::randn([pick.len() as i64, shape.input], (Kind::Float, Device::Cpu));
            a.set_fused_step(true, Some(300));
            assert!(
                tch::no_grad(|| net.fuses_step()),
                "the in-place path applies"
            );
            let ya = tch::no_grad(|| a.step(&net, &pick, &pick_t, &x));
            // The reference: recording gradients, so ATen's cells.
            let (h, c) = b.gather(&pick_t);
            let (yb, hb, cb) = net.step(&x, &h, c.as_ref(), 0.0);
            assert!(yb.requires_grad());
            b.scatter(&pick_t, &hb.detach(), cb.map(|c| c.detach()).as_ref());
            let diff = |p: &Tensor, q: &Tensor| {
                assert_eq!(p.size(), q.size());
                f64::try_from((p - q.detach()).abs().max()).unwrap()
            };
            assert!(diff(&ya, &yb) < 1e-4, "{shape:?}: y {}", diff(&ya, &yb));
            let (ha, ca) = a.gather(&all_t);
            let (hb, cb) = b.gather(&all_t);
            assert!(diff(&ha, &hb) < 1e-5, "{shape:?}: h");
            assert!(diff(&ca.unwrap(), &cb.unwrap()) < 1e-5, "{shape:?}: c");
            // The keys not stepped kept their state exactly.
            let rest: Vec<i64> = all.iter().filter(|s| !pick.contains(s)).copied().collect();
            let rest_t = Tensor::from_slice(&rest);
            let (hr, cr) = a.gather(&rest_t);
            let (h0r, c0r) = (h0.index_select(1, &rest_t), c0.index_select(1, &rest_t));
            assert!(hr.equal(&h0r) && cr.unwrap().equal(&c0r));
        }
    }

    #[test]
    fn lstm_forget_bias_is_one() {
        let (_vs, w, _, _, _) = setup(CellKind::Lstm);
        let f = (w.b_ih.narrow(0, 4, 4) + w.b_hh.narrow(0, 4, 4)).to_kind(Kind::Double);
        for v in Vec::<f64>::try_from(&f).unwrap() {
            assert!((v - 1.0).abs() < 1e-6);
        }
    }
}
