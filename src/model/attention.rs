//! Attention over a key's recent windows: the transformer cell
//! (`cell = "transformer"`) and temporal attention on a recurrent cell
//! (`attention = true`).
//!
//! Both attend over a *band*: the query of window `t` sees the windows
//! `t - W ..= t` (transformer) or `t - W ..= t - 1` (temporal attention),
//! never a later one. The per-key state is the ring of what those windows
//! contributed, oldest first, so one live step (`T = 1`) and one pass over a
//! whole sequence (`T` windows, the band mask of [`band`]) compute the same
//! thing, and TBPTT truncation is just detaching the ring between chunks.
//!
//! **Transformer** (pre-norm, Xiong et al. 2020): the input vector of each
//! window is embedded (`W_in x + b`); each layer is
//! `z += Drop(Attn(LN1(z)))`, `z += Drop(MLP(LN2(z)))` with multi-head
//! scaled dot-product self-attention and a GELU MLP (tanh approximation, width 4 x hidden);
//! a final LayerNorm feeds the network's head. Positions are encoded as a
//! learned bias per head and per offset `0..=W` from the query (T5-style
//! relative position bias, zero at start): "the position within the window",
//! the same for a live step and for every query of a sequence pass, which an
//! absolute encoding could not be. Calendar covariates are inputs already.
//! Dropout (training only) on the attention weights and both residual
//! branches.
//!
//! Transformer state per key, flat `[S]` with `S = W * (in + 1) + (L - 1) *
//! W * hidden`: the last `W` raw input vectors, each with a validity flag
//! (1 = a real window; a fresh key's ring is all zeros, i.e. invalid, and
//! invalid positions are masked out), then for each layer above the first
//! the last `W` inputs of that layer (a layer's keys and values are
//! recomputed from its inputs each step; the ring of layer inputs is what
//! makes a step equal a sequence pass with more than one layer).
//! With `W = 24`, 1 layer and 16 inputs that is 24 x 17 x 4 = 1632 bytes.
//!
//! **Temporal attention** (Luong-style, scaled dot product): the new top
//! state `h_t` queries the previous `W` top states with learned query and
//! key projections, the values are the top states themselves, plus a
//! learned bias per offset `1..=W`; the context is `sum_j a_j h_{t-j}` and
//! the head sees `[h_t, context]`. The "top state" is what the head would
//! see without attention: the top layer's hidden state, or with dense
//! connections the concatenation of every layer's (`width = layers *
//! hidden`). With no valid past state (a fresh key) the context is zero.
//! State besides the recurrent one: the last `W` top states with validity
//! flags, `W * (width + 1)` floats per key.
//!
//! **In the seq2seq decoder** (`attention = true` with `decoder =
//! "seq2seq"`; Luong et al. 2015, "general" score, scaled): the same ring,
//! but the query is the decoder's state. For window `t` the memory is the
//! `W + 1` top states `t - W ..= t` (the ring plus the current one, which
//! the decoder also starts from), with a learned bias per offset `0..=W`.
//! Each decoder step `k` first updates its GRU state `d_k`, then attends:
//! `q = W_q d_k` (`[width, hidden]`), `k_j = W_k h_j`, `a = softmax(q.k /
//! sqrt(width) + pos)` over the valid states, `c_k = sum_j a_j h_j`, and
//! its output is `O d_k + o + C c_k` (the context joins the output layer,
//! as `[h_t, context]` joins the direct head; the GRU's input stays the
//! previous output, so the plain decoder is this one with `C = 0`). The
//! network passes the decoder the flat window `[n, T, (W + 1) * (width +
//! 1)]` ([`Temporal::windows`]; a band of the ring and the `T` new tops,
//! one strided view for a whole sequence), so a live step and a sequence
//! pass build the same memories. Per key the state is the same ring as the
//! direct head's: `W * (width + 1)` floats. The key projection is folded
//! into the query (`q.k_j = (d W_q^T W_k).h_j`), so no key of the band is
//! ever projected: a decode costs one `[hidden, width]` product per step,
//! not `W + 1` `[width, width]` ones per window.
//!
//! Invariant: rows are keys and nothing here loops over keys or windows.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// Large negative logit for masked positions: exp() of it is 0 next to any
/// allowed position, and a row with none allowed comes out uniform, which
/// [`masked_softmax`] then zeroes.
const MASKED: f64 = -1e9;

/// PyTorch's `nn.Linear` default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn linear_init(fan_in: i64) -> Init {
    let k = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -k, up: k }
}

/// The band of a sequence pass over `W` ring positions followed by `T` new
/// ones: `(allowed [T, W + T], offset [T, W + T])`. Query `t` sits at
/// position `W + t`; key `s` is allowed when its offset `W + t - s` is in
/// `lo..=W`; `offset` is clamped into `0..=W` (for indexing the position
/// bias; out-of-band entries are masked anyway).
pub fn band(w: i64, t: i64, lo: i64, device: tch::Device) -> (Tensor, Tensor) {
    let q = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(1) + w;
    let k = Tensor::arange(w + t, (Kind::Int64, device)).unsqueeze(0);
    let off = q - k;
    let allowed = off.ge(lo).logical_and(&off.le(w));
    (allowed, off.clamp(0, w))
}

/// Softmax over the last dim of `logits` where `allowed` (broadcast), zero
/// elsewhere; a row with nothing allowed is all zeros.
pub fn masked_softmax(logits: &Tensor, allowed: &Tensor) -> Tensor {
    let keep = allowed.to_kind(logits.kind());
    logits
        .masked_fill(&allowed.logical_not(), MASKED)
        .softmax(-1, logits.kind())
        * keep
}

/// The relative position bias `[heads, T, W + T]` of a `[heads, W + 1]`
/// table for the offsets of [`band`].
fn position_bias(table: &Tensor, offset: &Tensor) -> Tensor {
    let heads = table.size()[0];
    let shape = offset.size();
    table
        .index_select(1, &offset.flatten(0, -1))
        .view([heads, shape[0], shape[1]])
}

/// One pre-norm encoder layer.
#[derive(Debug)]
struct EncoderLayer {
    ln1_w: Tensor,
    ln1_b: Tensor,
    w_qkv: Tensor,
    b_qkv: Tensor,
    w_o: Tensor,
    b_o: Tensor,
    /// Relative position bias `[heads, W + 1]`, by offset from the query.
    pos: Tensor,
    ln2_w: Tensor,
    ln2_b: Tensor,
    w_ff1: Tensor,
    b_ff1: Tensor,
    w_ff2: Tensor,
    b_ff2: Tensor,
}

/// The transformer cell's weights and shapes.
#[derive(Debug)]
pub struct Encoder {
    input: i64,
    d: i64,
    heads: i64,
    window: i64,
    w_in: Tensor,
    b_in: Tensor,
    layers: Vec<EncoderLayer>,
    lnf_w: Tensor,
    lnf_b: Tensor,
}

impl Encoder {
    /// Registers the encoder's weights under `p / "enc"`.
    pub fn new(p: &Path, input: i64, d: i64, layers: i64, heads: i64, window: i64) -> Self {
        let e = p / "enc";
        let ff = 4 * d;
        let layers = (0..layers)
            .map(|l| {
                let lp = &e / format!("l{l}");
                EncoderLayer {
                    ln1_w: lp.var("ln1_w", &[d], Init::Const(1.0)),
                    ln1_b: lp.var("ln1_b", &[d], Init::Const(0.0)),
                    w_qkv: lp.var("w_qkv", &[3 * d, d], linear_init(d)),
                    b_qkv: lp.var("b_qkv", &[3 * d], Init::Const(0.0)),
                    w_o: lp.var("w_o", &[d, d], linear_init(d)),
                    b_o: lp.var("b_o", &[d], Init::Const(0.0)),
                    pos: lp.var("pos", &[heads, window + 1], Init::Const(0.0)),
                    ln2_w: lp.var("ln2_w", &[d], Init::Const(1.0)),
                    ln2_b: lp.var("ln2_b", &[d], Init::Const(0.0)),
                    w_ff1: lp.var("w_ff1", &[ff, d], linear_init(d)),
                    b_ff1: lp.var("b_ff1", &[ff], Init::Const(0.0)),
                    w_ff2: lp.var("w_ff2", &[d, ff], linear_init(ff)),
                    b_ff2: lp.var("b_ff2", &[d], Init::Const(0.0)),
                }
            })
            .collect();
        Encoder {
            input,
            d,
            heads,
            window,
            w_in: e.var("w_in", &[d, input], linear_init(input)),
            b_in: e.var("b_in", &[d], Init::Const(0.0)),
            layers,
            lnf_w: e.var("lnf_w", &[d], Init::Const(1.0)),
            lnf_b: e.var("lnf_b", &[d], Init::Const(0.0)),
        }
    }

    /// Floats of state per key (see the module docs).
    pub fn state_width(&self) -> i64 {
        self.window * (self.input + 1) + (self.layers.len() as i64 - 1) * self.window * self.d
    }

    /// Runs `xs: [n, T, in]` from the per-key state `[n, S]`; returns the
    /// final-norm outputs at every step `[n, T, hidden]` and the new state.
    pub fn forward(
        &self,
        state: &Tensor,
        xs: &Tensor,
        dropout: f64,
        train: bool,
    ) -> (Tensor, Tensor) {
        let (w, inp, d) = (self.window, self.input, self.d);
        let size = xs.size();
        let (n, t) = (size[0], size[1]);
        let ring0 = state.narrow(1, 0, w * (inp + 1)).view([n, w, inp + 1]);
        let flagged = Tensor::cat(
            &[
                xs.shallow_clone(),
                Tensor::ones([n, t, 1], (xs.kind(), xs.device())),
            ],
            2,
        );
        let full0 = Tensor::cat(&[ring0, flagged], 1); // [n, W + T, in + 1]
        let valid = full0.select(2, inp).gt(0.5); // [n, W + T]
        let (band_ok, offset) = band(w, t, 0, xs.device());
        // [n, 1, T, W + T]: in the band and a real window.
        let allowed = band_ok
            .unsqueeze(0)
            .logical_and(&valid.unsqueeze(1))
            .unsqueeze(1);
        let mut rings = vec![full0.narrow(1, t, w).reshape([n, -1])];
        let mut z_full = full0.narrow(2, 0, inp).linear(&self.w_in, Some(&self.b_in));
        let mut z_new = z_full.narrow(1, w, t);
        let mut at = w * (inp + 1);
        for (l, layer) in self.layers.iter().enumerate() {
            if l > 0 {
                let ring = state.narrow(1, at, w * d).view([n, w, d]);
                at += w * d;
                z_full = Tensor::cat(&[ring, z_new], 1);
                rings.push(z_full.narrow(1, t, w).reshape([n, -1]));
            }
            z_new = self.layer(layer, &z_full, t, &allowed, &offset, dropout, train);
        }
        let top = z_new.layer_norm([d], Some(&self.lnf_w), Some(&self.lnf_b), 1e-5, false);
        (top, Tensor::cat(&rings, 1))
    }

    /// One layer: `z_full: [n, W + T, d]` (ring then new positions) ->
    /// the new positions' outputs `[n, T, d]`.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        p: &EncoderLayer,
        z_full: &Tensor,
        t: i64,
        allowed: &Tensor,
        offset: &Tensor,
        dropout: f64,
        train: bool,
    ) -> Tensor {
        let (w, d, h) = (self.window, self.d, self.heads);
        let dh = d / h;
        let n = z_full.size()[0];
        let ln = z_full.layer_norm([d], Some(&p.ln1_w), Some(&p.ln1_b), 1e-5, false);
        let qkv = ln.linear(&p.w_qkv, Some(&p.b_qkv)); // [n, W + T, 3d]
        let heads = |x: Tensor, len: i64| x.reshape([n, len, h, dh]).transpose(1, 2);
        let q = heads(qkv.narrow(2, 0, d).narrow(1, w, t), t); // [n, h, T, dh]
        let k = heads(qkv.narrow(2, d, d), w + t); // [n, h, W + T, dh]
        let v = heads(qkv.narrow(2, 2 * d, d), w + t);
        let logits = q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt()
            + position_bias(&p.pos, offset).unsqueeze(0);
        let att = masked_softmax(&logits, allowed).dropout(dropout, train);
        let ctx = att.matmul(&v).transpose(1, 2).reshape([n, t, d]);
        let z = z_full.narrow(1, w, t) + ctx.linear(&p.w_o, Some(&p.b_o)).dropout(dropout, train);
        let ff = z
            .layer_norm([d], Some(&p.ln2_w), Some(&p.ln2_b), 1e-5, false)
            .linear(&p.w_ff1, Some(&p.b_ff1))
            .gelu("tanh")
            .linear(&p.w_ff2, Some(&p.b_ff2));
        z + ff.dropout(dropout, train)
    }
}

/// Temporal attention over a recurrent cell's last `W` top states (each
/// `width` wide: see the module docs), queried by the current top state
/// (direct head) or by the seq2seq decoder's state.
#[derive(Debug)]
pub struct Temporal {
    width: i64,
    window: i64,
    /// `[width, query]`: the query is the top state (`query = width`) or
    /// the decoder's state (`query = hidden`).
    w_q: Tensor,
    w_k: Tensor,
    /// Bias by offset `0..=W` (offset 0, the query itself, is never allowed
    /// for the direct head; for the decoder it is the current top state).
    pos: Tensor,
}

/// What a seq2seq decode attends over, prepared once per window for all
/// its steps (see [`Temporal::memory`]).
pub struct Memory {
    /// `[m, W + 1, width]`, oldest first, the current top last.
    states: Tensor,
    /// `W_q^T W_k` `[query, width]`: `q.k_j = (W_q d).(W_k h_j) = (d W_q^T
    /// W_k).h_j`, so a decoder step projects its one query instead of the
    /// window projecting its `W + 1` keys (6 decoder steps against 25 keys
    /// per window at the defaults).
    fold: Tensor,
    /// `[m, W + 1]`: a real state (a fresh key has only the current one).
    valid: Tensor,
    /// The offset bias by window position `[1, W + 1]`.
    bias: Tensor,
}

impl Temporal {
    /// Registers the attention weights under `p / "att"`, for top states
    /// `width` wide queried by the top state (the direct head).
    pub fn new(p: &Path, width: i64, window: i64) -> Self {
        Self::with_query(p, width, width, window)
    }

    /// The same for the seq2seq decoder: its state (`query` wide) queries.
    pub fn for_decoder(p: &Path, width: i64, query: i64, window: i64) -> Self {
        Self::with_query(p, width, query, window)
    }

    fn with_query(p: &Path, width: i64, query: i64, window: i64) -> Self {
        let a = p / "att";
        Temporal {
            width,
            window,
            w_q: a.var("w_q", &[width, query], linear_init(query)),
            w_k: a.var("w_k", &[width, width], linear_init(width)),
            pos: a.var("pos", &[1, window + 1], Init::Const(0.0)),
        }
    }

    /// Floats of state per key: the ring of `W` top states with flags.
    pub fn state_width(&self) -> i64 {
        self.window * (self.width + 1)
    }

    /// The ring `[n, W * (H + 1)]` followed by the flagged new tops `[n, T,
    /// H]`: `[n, W + T, H + 1]`.
    fn full(&self, ring: &Tensor, tops: &Tensor) -> Tensor {
        let (w, hd) = (self.window, self.width);
        let size = tops.size();
        let (n, t) = (size[0], size[1]);
        let ring = ring.view([n, w, hd + 1]);
        let flagged = Tensor::cat(
            &[
                tops.shallow_clone(),
                Tensor::ones([n, t, 1], (tops.kind(), tops.device())),
            ],
            2,
        );
        Tensor::cat(&[ring, flagged], 1)
    }

    /// Decoder attention, the network's side: `ring: [n, W * (H + 1)]`,
    /// `tops: [n, T, H]` -> for each new step `t` the flagged states `t - W
    /// ..= t`, oldest first, flat `[n, T, (W + 1) * (H + 1)]` (what the
    /// decoder sees; [`Self::memory`] reads it), and the new ring.
    pub fn windows(&self, ring: &Tensor, tops: &Tensor) -> (Tensor, Tensor) {
        let (w, hd) = (self.window, self.width);
        let size = tops.size();
        let (n, t) = (size[0], size[1]);
        let full = self.full(ring, tops); // [n, W + T, H + 1]
                                          // Sliding windows of W + 1 positions, one per new step: [n, T, H + 1, W + 1].
        let win = full
            .unfold(1, w + 1, 1)
            .transpose(2, 3)
            .reshape([n, t, (w + 1) * (hd + 1)]);
        (win, full.narrow(1, t, w).reshape([n, -1]))
    }

    /// A decode's memory from flat windows `[m, (W + 1) * (H + 1)]` (of
    /// [`Self::windows`]), and the current top states `[m, H]` (the last
    /// position) that the decoder starts from.
    pub fn memory(&self, win: &Tensor) -> (Memory, Tensor) {
        let (w, hd) = (self.window, self.width);
        let m = win.size()[0];
        let full = win.view([m, w + 1, hd + 1]);
        let states = full.narrow(2, 0, hd);
        let current = states.select(1, w);
        let mem = Memory {
            fold: self.w_q.tr().matmul(&self.w_k),
            valid: full.select(2, hd).gt(0.5),
            // Position j of the window is offset W - j.
            bias: self.pos.flip([1]),
            states,
        };
        (mem, current)
    }

    /// The context `[m, H]` of decoder states `d: [m, query]` over `mem`.
    pub fn context(&self, mem: &Memory, d: &Tensor) -> Tensor {
        let q = d.matmul(&mem.fold).unsqueeze(2); // [m, H, 1]
        let logits = mem.states.matmul(&q).squeeze_dim(2) / (self.width as f64).sqrt() + &mem.bias;
        let att = masked_softmax(&logits, &mem.valid); // [m, W + 1]
        att.unsqueeze(1).matmul(&mem.states).squeeze_dim(1)
    }

    /// `tops: [n, T, H]` (top hidden states of `T` new steps), `ring: [n,
    /// W * (H + 1)]` -> the contexts `[n, T, H]` and the new ring.
    pub fn forward(&self, ring: &Tensor, tops: &Tensor) -> (Tensor, Tensor) {
        let (w, hd) = (self.window, self.width);
        let size = tops.size();
        let (n, t) = (size[0], size[1]);
        let full = self.full(ring, tops); // [n, W + T, H + 1]
        let hs = full.narrow(2, 0, hd);
        let valid = full.select(2, hd).gt(0.5);
        let (band_ok, offset) = band(w, t, 1, tops.device());
        let allowed = band_ok.unsqueeze(0).logical_and(&valid.unsqueeze(1)); // [n, T, W + T]
        let q = tops.matmul(&self.w_q.tr()); // [n, T, H]
        let k = hs.matmul(&self.w_k.tr()); // [n, W + T, H]
        let logits =
            q.matmul(&k.transpose(1, 2)) / (hd as f64).sqrt() + position_bias(&self.pos, &offset); // [1, T, W + T] broadcast
        let att = masked_softmax(&logits, &allowed);
        let ctx = att.matmul(&hs); // [n, T, H]
        (ctx, full.narrow(1, t, w).reshape([n, -1]))
    }
}

#[cfg(test)]
mod tests {
    //! Hand-checked attention: the band and the masked softmax by hand, the
    //! temporal attention against values worked out in f64 here, and the
    //! encoder against a straightforward loop implementation of its
    //! equations (the band semantics written out per key, per window, per
    //! head), never against the tensor code under test.
    #![allow(clippy::unwrap_used, clippy::needless_range_loop)]

    use std::collections::BTreeMap;

    use tch::{nn, Device, Kind, Tensor};

    use super::*;

    fn v2(t: &Tensor) -> Vec<Vec<f64>> {
        Vec::<Vec<f64>>::try_from(&t.to_kind(Kind::Double)).unwrap()
    }

    fn v1(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn band_and_masked_softmax_by_hand() {
        // W = 2 ring positions (0, 1) then T = 2 queries at positions 2, 3.
        let (ok, off) = band(2, 2, 0, Device::Cpu);
        let ok: Vec<Vec<bool>> = Vec::<Vec<bool>>::try_from(&ok).unwrap();
        assert_eq!(
            ok,
            vec![vec![true, true, true, false], vec![false, true, true, true]]
        );
        assert_eq!(v2(&off), vec![vec![2., 1., 0., 0.], vec![2., 2., 1., 0.]]);
        // Temporal attention's band excludes the query itself (lo = 1).
        let (ok1, _) = band(2, 1, 1, Device::Cpu);
        assert_eq!(
            Vec::<Vec<bool>>::try_from(&ok1).unwrap(),
            vec![vec![true, true, false]]
        );
        // Softmax over [0, ln 3, 5 (masked)] = [1/4, 3/4, 0]; a row with
        // nothing allowed is zeros.
        let logits = Tensor::from_slice(&[0.0f32, 3f32.ln(), 5.0, 1.0, 2.0, 3.0]).view([2, 3]);
        let allowed = Tensor::from_slice(&[true, true, false, false, false, false]).view([2, 3]);
        let p = v2(&masked_softmax(&logits, &allowed));
        let want = [[0.25, 0.75, 0.0], [0.0, 0.0, 0.0]];
        for r in 0..2 {
            for c in 0..3 {
                assert!((p[r][c] - want[r][c]).abs() < 1e-6, "{p:?}");
            }
        }
    }

    #[test]
    fn temporal_attention_by_hand() {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = Temporal::new(&vs.root(), 2, 2);
        tch::no_grad(|| {
            a.w_q
                .shallow_clone()
                .copy_(&Tensor::eye(2, (Kind::Float, Device::Cpu)));
            a.w_k
                .shallow_clone()
                .copy_(&Tensor::eye(2, (Kind::Float, Device::Cpu)));
            // Offset 1 gets +0.5, offset 2 nothing.
            a.pos
                .shallow_clone()
                .copy_(&Tensor::from_slice(&[0.0f32, 0.5, 0.0]).view([1, 3]));
        });
        // Key 0: ring (oldest first) [1, 0], [0, 1], both valid; query [2, 0].
        // Key 1: fresh (ring all invalid); query [1, 1].
        let ring = Tensor::from_slice(&[
            1.0f32, 0.0, 1.0, 0.0, 1.0, 1.0, // key 0
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, // key 1
        ])
        .view([2, 6]);
        let tops = Tensor::from_slice(&[2.0f32, 0.0, 1.0, 1.0]).view([2, 1, 2]);
        let (ctx, new_ring) = a.forward(&ring, &tops);
        // Key 0: logits q.k/sqrt(2) + bias: oldest [1,0] at offset 2 ->
        // 2/sqrt(2); newest [0,1] at offset 1 -> 0 + 0.5.
        let (l_old, l_new): (f64, f64) = (2.0 / 2f64.sqrt(), 0.5);
        let w_old = l_old.exp() / (l_old.exp() + l_new.exp());
        let want0 = [w_old, 1.0 - w_old];
        let got = v1(&ctx);
        assert!(
            (got[0] - want0[0]).abs() < 1e-6 && (got[1] - want0[1]).abs() < 1e-6,
            "{got:?}"
        );
        // Key 1 has no past: zero context.
        assert_eq!(&got[2..], &[0.0, 0.0]);
        // The ring moved on: [0,1,1] then the query [2,0,1]; key 1: invalid then [1,1,1].
        assert_eq!(
            v1(&new_ring),
            vec![0., 1., 1., 2., 0., 1., 0., 0., 0., 1., 1., 1.]
        );
    }

    /// The encoder's equations, written out with loops in f64.
    struct Naive {
        w: BTreeMap<String, Tensor>,
        d: usize,
        heads: usize,
        window: usize,
        layers: usize,
    }

    impl Naive {
        fn mat(&self, name: &str) -> Vec<Vec<f64>> {
            v2(&self.w[name])
        }
        fn vec(&self, name: &str) -> Vec<f64> {
            v1(&self.w[name])
        }
        fn affine(w: &[Vec<f64>], b: &[f64], x: &[f64]) -> Vec<f64> {
            w.iter()
                .zip(b)
                .map(|(r, bi)| r.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + bi)
                .collect()
        }
        fn layer_norm(x: &[f64], g: &[f64], b: &[f64]) -> Vec<f64> {
            let n = x.len() as f64;
            let mean = x.iter().sum::<f64>() / n;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            x.iter()
                .enumerate()
                .map(|(i, v)| (v - mean) / (var + 1e-5).sqrt() * g[i] + b[i])
                .collect()
        }
        fn gelu(x: f64) -> f64 {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        }

        /// One key's sequence from a fresh state: outputs `[T][d]`.
        fn run(&self, xs: &[Vec<f64>]) -> Vec<Vec<f64>> {
            let (d, h, w) = (self.d, self.heads, self.window);
            let dh = d / h;
            let mut z: Vec<Vec<f64>> = xs
                .iter()
                .map(|x| Self::affine(&self.mat("enc.w_in"), &self.vec("enc.b_in"), x))
                .collect();
            for l in 0..self.layers {
                let p = |n: &str| format!("enc.l{l}.{n}");
                let ln: Vec<Vec<f64>> = z
                    .iter()
                    .map(|v| Self::layer_norm(v, &self.vec(&p("ln1_w")), &self.vec(&p("ln1_b"))))
                    .collect();
                let qkv: Vec<Vec<f64>> = ln
                    .iter()
                    .map(|v| Self::affine(&self.mat(&p("w_qkv")), &self.vec(&p("b_qkv")), v))
                    .collect();
                let pos = self.mat(&p("pos"));
                let mut out = Vec::new();
                for t in 0..z.len() {
                    // Keys: windows t - W ..= t that exist (a fresh key's ring is empty).
                    let from = t.saturating_sub(w);
                    let mut ctx = vec![0.0; d];
                    for hd in 0..h {
                        let q = &qkv[t][hd * dh..(hd + 1) * dh];
                        let logits: Vec<f64> = (from..=t)
                            .map(|s| {
                                let k = &qkv[s][d + hd * dh..d + (hd + 1) * dh];
                                q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>()
                                    / (dh as f64).sqrt()
                                    + pos[hd][t - s]
                            })
                            .collect();
                        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = logits.iter().map(|v| (v - m).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        for (j, s) in (from..=t).enumerate() {
                            for c in 0..dh {
                                ctx[hd * dh + c] += e[j] / sum * qkv[s][2 * d + hd * dh + c];
                            }
                        }
                    }
                    let att = Self::affine(&self.mat(&p("w_o")), &self.vec(&p("b_o")), &ctx);
                    let zt: Vec<f64> = z[t].iter().zip(&att).map(|(a, b)| a + b).collect();
                    let n2 = Self::layer_norm(&zt, &self.vec(&p("ln2_w")), &self.vec(&p("ln2_b")));
                    let f1: Vec<f64> =
                        Self::affine(&self.mat(&p("w_ff1")), &self.vec(&p("b_ff1")), &n2)
                            .into_iter()
                            .map(Self::gelu)
                            .collect();
                    let f2 = Self::affine(&self.mat(&p("w_ff2")), &self.vec(&p("b_ff2")), &f1);
                    out.push(zt.iter().zip(&f2).map(|(a, b)| a + b).collect());
                }
                z = out;
            }
            z.iter()
                .map(|v| Self::layer_norm(v, &self.vec("enc.lnf_w"), &self.vec("enc.lnf_b")))
                .collect()
        }
    }

    #[test]
    fn encoder_matches_the_equations_and_steps_equal_one_pass() {
        let (n, t, inp, d, heads, window) = (2i64, 7i64, 3i64, 4i64, 2i64, 3i64);
        for layers in [1i64, 2] {
            let vs = nn::VarStore::new(Device::Cpu);
            let enc = Encoder::new(&vs.root(), inp, d, layers, heads, window);
            // Every weight random (LayerNorm gains and position biases too),
            // so nothing is checked against a trivial value.
            tch::manual_seed(3);
            tch::no_grad(|| {
                for (_, mut v) in vs.variables() {
                    let r = Tensor::rand_like(&v) - 0.5;
                    v.copy_(&r);
                }
            });
            let naive = Naive {
                w: vs.variables().into_iter().collect(),
                d: d as usize,
                heads: heads as usize,
                window: window as usize,
                layers: layers as usize,
            };
            let xs = Tensor::randn([n, t, inp], (Kind::Float, Device::Cpu));
            let zero = Tensor::zeros([n, enc.state_width()], (Kind::Float, Device::Cpu));
            let (seq, state) = tch::no_grad(|| enc.forward(&zero, &xs, 0.0, false));
            for k in 0..n {
                let want = naive.run(&v2(&xs.get(k)));
                let got = v2(&seq.get(k));
                for s in 0..t as usize {
                    for c in 0..d as usize {
                        assert!(
                            (got[s][c] - want[s][c]).abs() < 1e-4,
                            "layers {layers} key {k} t {s}: {:?} vs {:?}",
                            got[s],
                            want[s]
                        );
                    }
                }
            }
            // Window by window from the same zero state: the same outputs and
            // the same final state (the band mask makes them equal).
            let mut st = zero.shallow_clone();
            let mut outs = Vec::new();
            for s in 0..t {
                let (o, nst) = tch::no_grad(|| enc.forward(&st, &xs.narrow(1, s, 1), 0.0, false));
                outs.push(o);
                st = nst;
            }
            let steps = Tensor::cat(&outs, 1);
            let dy = f64::try_from((&steps - &seq).abs().max()).unwrap();
            let ds = f64::try_from((&st - &state).abs().max()).unwrap();
            assert!(dy < 1e-5 && ds < 1e-6, "layers {layers}: {dy} {ds}");
            // Two chunks (as TBPTT runs them): the same again.
            let (a, sa) = tch::no_grad(|| enc.forward(&zero, &xs.narrow(1, 0, 4), 0.0, false));
            let (b, sb) = tch::no_grad(|| enc.forward(&sa, &xs.narrow(1, 4, t - 4), 0.0, false));
            let dy = f64::try_from((Tensor::cat(&[a, b], 1) - &seq).abs().max()).unwrap();
            let ds = f64::try_from((&sb - &state).abs().max()).unwrap();
            assert!(dy < 1e-5 && ds < 1e-6, "layers {layers} chunks: {dy} {ds}");
        }
    }
}
