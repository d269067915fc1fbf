//! Losses of the SAM training recipe: Dice per predicted mask, IoU regression, focal.
//!
//! Shapes: masks are `[n, k, h, w]` (n objects, k masks per object), targets `[n, 1, h, w]`
//! with values in {0, 1}.

// `+=` on a Tensor is an in-place op; the losses build new autograd nodes instead.
#![allow(clippy::assign_op_pattern)]

use tch::{Kind, Reduction, Tensor};

/// torch_em's Dice epsilon (`dice_score(..., eps=1e-7)`).
const DICE_EPS: f64 = 1e-7;

/// Soft Dice loss of every mask against its object's target: `1 - 2·Σpt / (Σp² + Σt²)`, as
/// torch_em's `DiceLoss` defines it. Returns `[n, k]`.
pub fn dice_loss_per_mask(probs: &Tensor, target: &Tensor) -> Tensor {
    let dims: &[i64] = &[2, 3];
    let target = target.to_kind(probs.kind()).expand_as(probs);
    let num = (probs * &target).sum_dim_intlist(dims, false, probs.kind());
    let den = probs.square().sum_dim_intlist(dims, false, probs.kind())
        + target.square().sum_dim_intlist(dims, false, probs.kind());
    1.0 - num * 2.0 / den.clamp_min(DICE_EPS)
}

/// IoU of every binarised mask (`prob > 0.5`) with its object's target, `[n, k]`; no gradient.
/// An empty prediction of an empty target counts as IoU 1.
pub fn mask_iou(probs: &Tensor, target: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let dims: &[i64] = &[2, 3];
        let pred = probs.gt(0.5);
        let target = target.gt(0.5).expand_as(&pred);
        let inter = pred
            .logical_and(&target)
            .sum_dim_intlist(dims, false, Kind::Float);
        let union = pred
            .logical_or(&target)
            .sum_dim_intlist(dims, false, Kind::Float);
        let empty = union.eq(0.0);
        (inter / union.clamp_min(1.0)).masked_fill(&empty, 1.0)
    })
}

/// Sigmoid focal loss (RetinaNet; alpha 0.25, gamma 2), mean over all elements, `[n, k]`.
pub fn focal_loss_per_mask(logits: &Tensor, target: &Tensor) -> Tensor {
    let target = target.to_kind(logits.kind()).expand_as(logits);
    let p = logits.sigmoid();
    let ce =
        logits.binary_cross_entropy_with_logits::<Tensor>(&target, None, None, Reduction::None);
    let not_p = p.neg() + 1.0;
    let not_target = target.neg() + 1.0;
    let p_t = &p * &target + not_p * &not_target;
    let alpha_t = &target * 0.25 + not_target * 0.75;
    (alpha_t * ce * (p_t.neg() + 1.0).square()).mean_dim(&[2i64, 3][..], false, logits.kind())
}

/// The loss of one prompting round: the Dice of the best of the k masks per object (the minimum,
/// as micro_sam does for multimask output), plus the MSE between predicted and true IoU of every
/// mask, plus an optional focal term on the chosen masks. Returns (total, dice, iou_mse) and
/// the index of the chosen mask per object.
pub struct RoundLoss {
    /// Dice + IoU-MSE (+ focal): the scalar to back-propagate.
    pub total: Tensor,
    /// The Dice part (mean over objects of the best mask's loss), a number without graph.
    pub dice: Tensor,
    /// The IoU-regression part, a number without graph.
    pub iou_mse: Tensor,
    /// `[n]` index of the best mask of each object.
    pub best: Tensor,
}

impl std::fmt::Debug for RoundLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundLoss")
            .field("dice", &sam_torch::read_f64(&self.dice).ok())
            .field("iou_mse", &sam_torch::read_f64(&self.iou_mse).ok())
            .finish()
    }
}

/// Computes [`RoundLoss`] from mask logits `[n, k, h, w]`, IoU predictions `[n, k]` and targets
/// `[n, 1, h, w]`.
pub fn round_loss(
    logits: &Tensor,
    iou_pred: &Tensor,
    target: &Tensor,
    focal_weight: f64,
) -> RoundLoss {
    let probs = logits.sigmoid();
    let dice = dice_loss_per_mask(&probs, target); // [n, k]
    let (dice_best, best) = dice.min_dim(1, false);
    let true_iou = mask_iou(&probs, target);
    let iou_mse = iou_pred
        .to_kind(Kind::Float)
        .mse_loss(&true_iou, Reduction::Mean);
    let dice_mean = dice_best.mean(Kind::Float);
    let mut total = &dice_mean + &iou_mse;
    if focal_weight > 0.0 {
        let focal = focal_loss_per_mask(logits, target)
            .gather(1, &best.unsqueeze(1), false)
            .mean(Kind::Float);
        total = total + focal * focal_weight;
    }
    RoundLoss {
        dice: dice_mean.detach(),
        iou_mse: iou_mse.detach(),
        total,
        best,
    }
}

/// Soft Dice loss `1 - 2·Σpt / (Σp² + Σt²)` of one channel map against a target, both `[b, h, w]`,
/// optionally restricted to `mask`; the building block of the distance loss.
fn dice_channel(pred: &Tensor, target: &Tensor) -> Tensor {
    let num = (pred * target).sum(Kind::Float);
    let den = pred.square().sum(Kind::Float) + target.square().sum(Kind::Float);
    1.0 - num * 2.0 / den.clamp_min(DICE_EPS)
}

/// torch_em's `DiceBasedDistanceLoss` for the UNETR decoder: Dice on the foreground channel plus
/// Dice on the centre- and boundary-distance channels, the distances compared only inside the
/// target foreground. `pred` and `target` are `[b, 3, h, w]` (foreground, centre, boundary), `pred`
/// already through the sigmoid.
pub fn distance_loss(pred: &Tensor, target: &Tensor) -> Tensor {
    let fg_pred = pred.select(1, 0);
    let fg = target.select(1, 0);
    let mut loss = dice_channel(&fg_pred, &fg);
    for c in 1..3 {
        loss = loss + dice_channel(&(pred.select(1, c) * &fg), &(target.select(1, c) * &fg));
    }
    loss
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).reshape(shape)
    }

    #[test]
    fn dice_by_hand() {
        // probs [0.5, 1, 0, 0] vs target [1, 1, 0, 0]: num = 1.5, den = 1.25 + 2 = 3.25.
        let probs = t(&[0.5, 1.0, 0.0, 0.0], &[1, 1, 2, 2]);
        let target = t(&[1.0, 1.0, 0.0, 0.0], &[1, 1, 2, 2]);
        let d = dice_loss_per_mask(&probs, &target).double_value(&[0, 0]);
        assert!((d - (1.0 - 3.0 / 3.25)).abs() < 1e-6, "{d}");
    }

    #[test]
    fn round_loss_picks_the_best_mask_and_regresses_iou() {
        let target = t(&[1.0, 1.0, 0.0, 0.0], &[1, 1, 2, 2]);
        // mask 0 perfect (large logits), mask 1 inverted.
        let logits = t(&[20., 20., -20., -20., -20., -20., 20., 20.], &[1, 2, 2, 2]);
        let iou_pred = t(&[1.0, 0.0], &[1, 2]);
        let l = round_loss(&logits, &iou_pred, &target, 0.0);
        assert_eq!(l.best.int64_value(&[0]), 0);
        let value = |t: &Tensor| t.double_value(&[]);
        assert!(value(&l.dice) < 1e-6 && value(&l.iou_mse) < 1e-9, "{l:?}");
        let wrong_iou = t(&[0.0, 1.0], &[1, 2]);
        let l = round_loss(&logits, &wrong_iou, &target, 0.0);
        assert!((value(&l.iou_mse) - 1.0).abs() < 1e-6, "{l:?}");
    }

    #[test]
    fn mask_iou_by_hand() {
        let probs = t(&[0.9, 0.9, 0.9, 0.1], &[1, 1, 2, 2]);
        let target = t(&[1.0, 1.0, 0.0, 0.0], &[1, 1, 2, 2]);
        let iou = mask_iou(&probs, &target).double_value(&[0, 0]);
        assert!((iou - 2.0 / 3.0).abs() < 1e-6);
        let empty = Tensor::zeros([1, 1, 2, 2], (Kind::Float, Device::Cpu));
        assert_eq!(mask_iou(&empty, &empty).double_value(&[0, 0]), 1.0);
    }

    #[test]
    fn focal_loss_is_small_for_confident_correct_and_large_for_wrong() {
        let target = t(&[1.0, 0.0], &[1, 1, 1, 2]);
        let good =
            focal_loss_per_mask(&t(&[8.0, -8.0], &[1, 1, 1, 2]), &target).double_value(&[0, 0]);
        let bad =
            focal_loss_per_mask(&t(&[-8.0, 8.0], &[1, 1, 1, 2]), &target).double_value(&[0, 0]);
        assert!(good < 1e-6 && bad > 1.0, "good {good} bad {bad}");
    }

    #[test]
    fn distance_loss_zero_for_perfect_prediction() {
        let target = Tensor::rand([2, 3, 4, 4], (Kind::Float, Device::Cpu))
            .gt(0.5)
            .to_kind(Kind::Float);
        assert!(distance_loss(&target, &target).double_value(&[]) < 1e-6);
        assert!(distance_loss(&(1.0 - &target), &target).double_value(&[]) > 1.0);
    }
}
