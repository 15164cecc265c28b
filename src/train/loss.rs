//! Training losses on scaled targets: MSE, MAE, or the pinball loss
//! averaged over quantiles, each masked (burn-in, missing targets).

use tch::{Kind, Tensor};

use crate::config::{PointLoss, TrainConfig};

/// The loss of a batch: MSE, MAE, or (with quantiles) the pinball loss
/// averaged over quantiles.
#[derive(Debug, Clone)]
pub enum Loss {
    Mse,
    Mae,
    Pinball(Vec<f64>),
}

impl Loss {
    pub fn of(t: &TrainConfig, quantiles: &[f64]) -> Self {
        if !quantiles.is_empty() {
            Loss::Pinball(quantiles.to_vec())
        } else if let Some(tau) = t.point_tau {
            Loss::Pinball(vec![tau])
        } else if t.loss == PointLoss::Mae {
            Loss::Mae
        } else {
            Loss::Mse
        }
    }
}

/// Sum of the loss over masked terms, and the number of terms.
/// `pred: [B, T, Q*H]` (quantile-major), `y: [B, T, H]`, `mask: [B, T]`.
pub(super) fn masked_loss(
    pred: &Tensor,
    y: &Tensor,
    mask: &Tensor,
    loss: &Loss,
) -> (Tensor, Tensor) {
    let m = mask.to_kind(Kind::Float).unsqueeze(2);
    let h = y.size()[2];
    let per = match loss {
        Loss::Mse => (pred - y).square(),
        Loss::Mae => (pred - y).abs(),
        Loss::Pinball(qs) => {
            let nq = qs.len() as i64;
            let q = Tensor::from_slice(qs)
                .to_kind(Kind::Float)
                .to_device(pred.device())
                .repeat_interleave_self_int(h, Some(0), None::<i64>);
            let e = y.repeat([1, 1, nq]) - pred; // y - p
            let q = q.view([1, 1, -1]);
            (&e * &q).maximum(&(&e * (q - 1.0)))
        }
    };
    let total = (per * &m).sum(Kind::Float);
    let count = m.sum(Kind::Float) * pred.size()[2] as f64;
    (total, count)
}
