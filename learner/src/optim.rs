//! AdamW over candle `Var`s with state that can be saved and restored exactly, gradient
//! accumulation, global grad-norm clipping and the learning-rate schedule.
//!
//! `candle_nn::AdamW` keeps its moments private, so a resumed run could not continue
//! with the same moments; exact resume needs them, hence this small re-implementation.
//! The update is PyTorch's `torch.optim.AdamW` (decoupled weight decay, bias-corrected
//! moments); moments are kept in f32 whatever the parameter dtype.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use crate::config::{LrSchedule, TrainingConfig};
use crate::error::{LearnerError, Result};

/// AdamW hyper-parameters other than the learning rate (which the schedule sets per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub epsilon: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl AdamWParams {
    /// The values of a `[training]` section.
    pub fn from_training(training: &TrainingConfig) -> Self {
        Self {
            beta1: training.adam_beta1,
            beta2: training.adam_beta2,
            epsilon: training.adam_epsilon,
            weight_decay: training.weight_decay,
        }
    }
}

/// AdamW over named `Var`s.
#[derive(Debug)]
pub struct AdamW {
    names: Vec<String>,
    vars: Vec<Var>,
    first_moments: Vec<Tensor>,
    second_moments: Vec<Tensor>,
    steps_taken: u64,
    params: AdamWParams,
}

impl AdamW {
    /// An optimizer for `vars` (name, variable) in the given order, with zero moments.
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let mut names = Vec::with_capacity(vars.len());
        let mut plain_vars = Vec::with_capacity(vars.len());
        let mut first_moments = Vec::with_capacity(vars.len());
        let mut second_moments = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let zeros = Tensor::zeros(var.shape(), DType::F32, var.device())?;
            first_moments.push(zeros.clone());
            second_moments.push(zeros);
            names.push(name);
            plain_vars.push(var);
        }
        Ok(Self {
            names,
            vars: plain_vars,
            first_moments,
            second_moments,
            steps_taken: 0,
            params,
        })
    }

    /// The variables, in the optimizer's order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The variables' names, in the optimizer's order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Updates taken so far (the `t` of the bias correction).
    pub fn steps_taken(&self) -> u64 {
        self.steps_taken
    }

    /// One AdamW update with `grads[i]` the gradient of `vars()[i]` (`None`: the
    /// variable got no gradient this step; its moments still decay, as in PyTorch when
    /// the gradient is zero).
    pub fn step(&mut self, grads: &[Option<Tensor>], learning_rate: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(LearnerError::Policy(format!(
                "optimizer got {} gradients for {} variables",
                grads.len(),
                self.vars.len()
            )));
        }
        self.steps_taken += 1;
        let step = self.steps_taken as i32;
        let AdamWParams {
            beta1,
            beta2,
            epsilon,
            weight_decay,
        } = self.params;
        let first_correction = 1.0 - beta1.powi(step);
        let second_correction = 1.0 - beta2.powi(step);
        let slots = self.vars.iter().zip(grads).zip(
            self.first_moments
                .iter_mut()
                .zip(self.second_moments.iter_mut()),
        );
        for ((var, grad), (first_moment, second_moment)) in slots {
            let grad = match grad {
                Some(grad) => grad.to_dtype(DType::F32)?,
                None => var.zeros_like()?.to_dtype(DType::F32)?,
            };
            let first = ((&*first_moment * beta1)? + (&grad * (1.0 - beta1))?)?;
            let second = ((&*second_moment * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let value = var.as_tensor().to_dtype(DType::F32)?;
            let decayed = (&value * (1.0 - learning_rate * weight_decay))?;
            let denominator = ((&second / second_correction)?.sqrt()? + epsilon)?;
            let update = ((&first / first_correction)? / denominator)?;
            let next = (decayed - (update * learning_rate)?)?;
            var.set(&next.to_dtype(var.dtype())?)?;
            *first_moment = first;
            *second_moment = second;
        }
        Ok(())
    }

    /// The moments as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`), for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut tensors = HashMap::with_capacity(self.names.len() * 2);
        for (index, name) in self.names.iter().enumerate() {
            tensors.insert(format!("exp_avg.{name}"), self.first_moments[index].clone());
            tensors.insert(
                format!("exp_avg_sq.{name}"),
                self.second_moments[index].clone(),
            );
        }
        tensors
    }

    /// Restores moments and the step count saved by [`AdamW::state_tensors`]; every
    /// variable must be present with its shape.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps_taken: u64,
    ) -> Result<()> {
        for (index, name) in self.names.iter().enumerate() {
            for (prefix, slot) in [
                ("exp_avg", &mut self.first_moments[index]),
                ("exp_avg_sq", &mut self.second_moments[index]),
            ] {
                let key = format!("{prefix}.{name}");
                let saved = tensors.get(&key).ok_or_else(|| {
                    LearnerError::Policy(format!("optimizer state lacks `{key}`"))
                })?;
                if saved.shape() != slot.shape() {
                    return Err(LearnerError::Policy(format!(
                        "optimizer state `{key}` has shape {:?}, the variable {:?}",
                        saved.shape(),
                        slot.shape()
                    )));
                }
                *slot = saved.to_dtype(DType::F32)?.to_device(slot.device())?;
            }
        }
        self.steps_taken = steps_taken;
        Ok(())
    }
}

/// Sums gradients of the same variables over micro-batches.
#[derive(Debug)]
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    /// An empty accumulator for `count` variables.
    pub fn new(count: usize) -> Self {
        Self {
            sums: vec![None; count],
        }
    }

    /// Adds the gradients of `vars` found in `grads` (a backward pass's store).
    pub fn add(&mut self, vars: &[Var], grads: &candle_core::backprop::GradStore) -> Result<()> {
        for (slot, var) in self.sums.iter_mut().zip(vars) {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let grad = grad.to_dtype(DType::F32)?;
            *slot = Some(match slot.take() {
                None => grad,
                Some(sum) => (sum + grad)?,
            });
        }
        Ok(())
    }

    /// The summed gradients, one per variable.
    pub fn into_grads(self) -> Vec<Option<Tensor>> {
        self.sums
    }
}

/// Global L2 norm of all gradients (NaN or inf if any element is).
pub fn global_grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut squares = 0.0f64;
    for grad in grads.iter().flatten() {
        squares += grad
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(squares.sqrt())
}

/// Scales the gradients so their global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)`, never above 1).
pub fn clip_grads(grads: &mut [Option<Tensor>], norm: f64, max_norm: f64) -> Result<()> {
    if max_norm <= 0.0 || !norm.is_finite() {
        return Ok(());
    }
    let factor = max_norm / (norm + 1e-6);
    if factor >= 1.0 {
        return Ok(());
    }
    for grad in grads.iter_mut().flatten() {
        *grad = (&*grad * factor)?;
    }
    Ok(())
}

/// The learning rate of the `step`-th update (1-based): linear warm-up over
/// `warmup_steps` (the first update already moves, at `peak / warmup_steps`), then the
/// decay from the peak to `min_lr_ratio × peak` at `total_steps`.
pub fn learning_rate(
    step: usize,
    total_steps: usize,
    warmup_steps: usize,
    peak: f64,
    schedule: LrSchedule,
    min_lr_ratio: f64,
) -> f64 {
    if warmup_steps > 0 && step <= warmup_steps {
        return peak * step as f64 / warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(warmup_steps);
    let progress = if decay_steps == 0 {
        1.0
    } else {
        (step.saturating_sub(warmup_steps) as f64 / decay_steps as f64).min(1.0)
    };
    let shape = match schedule {
        LrSchedule::Constant => return peak,
        LrSchedule::Linear => 1.0 - progress,
        LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    peak * (min_lr_ratio + (1.0 - min_lr_ratio) * shape)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_nn::Optimizer;

    use super::*;

    fn params(weight_decay: f64) -> AdamWParams {
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay,
        }
    }

    fn scalar_var(value: f32) -> Var {
        Var::from_tensor(&Tensor::new(&[value], &Device::Cpu).unwrap()).unwrap()
    }

    #[test]
    fn adamw_matches_a_hand_worked_example() {
        // p = 1, lr 0.1, wd 0.1, gradients 0.5 then −0.5.
        // Step 1: p ← 0.99; m = 0.05, v = 2.5e-4; m̂ = 0.5, v̂ = 0.25 → p = 0.99 − 0.1 = 0.89.
        // Step 2: p ← 0.8811; m = −0.005, v = 4.9975e-4; m̂ = −0.0263158, v̂ = 0.25
        //         → p = 0.8811 + 0.1 × 0.0526316 = 0.8863632.
        let var = scalar_var(1.0);
        let mut optimizer = AdamW::new(vec![("p".into(), var.clone())], params(0.1)).unwrap();
        let grad = |value: f32| Some(Tensor::new(&[value], &Device::Cpu).unwrap());
        optimizer.step(&[grad(0.5)], 0.1).unwrap();
        let after_one = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((after_one - 0.89).abs() < 1e-6, "{after_one}");
        optimizer.step(&[grad(-0.5)], 0.1).unwrap();
        let after_two = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((after_two - 0.886_363_2).abs() < 1e-6, "{after_two}");
        assert_eq!(optimizer.steps_taken(), 2);
    }

    #[test]
    fn adamw_agrees_with_candle_nn() {
        // Same quadratic, same gradients: ours and candle-nn's AdamW must stay together.
        let device = Device::Cpu;
        let start = Tensor::new(&[[0.3f32, -1.2], [2.0, 0.7]], &device).unwrap();
        let target = Tensor::new(&[[1.0f32, 0.0], [-1.0, 0.5]], &device).unwrap();
        let ours = Var::from_tensor(&start).unwrap();
        let theirs = Var::from_tensor(&start).unwrap();
        let mut ours_opt = AdamW::new(vec![("w".into(), ours.clone())], params(0.01)).unwrap();
        let mut theirs_opt = candle_nn::AdamW::new(
            vec![theirs.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.05,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
        )
        .unwrap();
        for _ in 0..20 {
            let loss = (ours.as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let grad = grads.get(ours.as_tensor()).cloned();
            ours_opt.step(&[grad], 0.05).unwrap();
            let loss = (theirs.as_tensor() - &target)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            theirs_opt.backward_step(&loss).unwrap();
        }
        let diff = (ours.as_tensor() - theirs.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_keepdim(0)
            .unwrap()
            .max_keepdim(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!(diff < 1e-5, "ours and candle-nn's AdamW diverged by {diff}");
    }

    #[test]
    fn saved_state_resumes_bit_for_bit() {
        let grads: Vec<f32> = vec![0.5, -0.2, 0.9, 0.1, -0.7];
        let grad = |value: f32| Some(Tensor::new(&[value, value * 2.0], &Device::Cpu).unwrap());
        let straight =
            Var::from_tensor(&Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap()).unwrap();
        let mut straight_opt =
            AdamW::new(vec![("w".into(), straight.clone())], params(0.05)).unwrap();
        for value in &grads {
            straight_opt.step(&[grad(*value)], 0.01).unwrap();
        }
        let first = Var::from_tensor(&Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap()).unwrap();
        let mut first_opt = AdamW::new(vec![("w".into(), first.clone())], params(0.05)).unwrap();
        for value in &grads[..3] {
            first_opt.step(&[grad(*value)], 0.01).unwrap();
        }
        let saved = first_opt.state_tensors();
        let resumed = Var::from_tensor(&first.as_tensor().copy().unwrap()).unwrap();
        let mut resumed_opt =
            AdamW::new(vec![("w".into(), resumed.clone())], params(0.05)).unwrap();
        resumed_opt
            .load_state(&saved, first_opt.steps_taken())
            .unwrap();
        for value in &grads[3..] {
            resumed_opt.step(&[grad(*value)], 0.01).unwrap();
        }
        assert_eq!(
            straight.as_tensor().to_vec1::<f32>().unwrap(),
            resumed.as_tensor().to_vec1::<f32>().unwrap()
        );
        // A state missing a variable is an error naming it.
        let mut other = AdamW::new(vec![("v".into(), scalar_var(0.0))], params(0.0)).unwrap();
        let err = other.load_state(&saved, 3).unwrap_err();
        assert!(err.to_string().contains("exp_avg.v"), "{err}");
    }

    #[test]
    fn grad_norm_and_clipping() {
        // Gradients (3, 4) and (12): norm sqrt(9 + 16 + 144) = 13.
        let mut grads = vec![
            Some(Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()),
            None,
            Some(Tensor::new(&[12.0f32], &Device::Cpu).unwrap()),
        ];
        let norm = global_grad_norm(&grads).unwrap();
        assert!((norm - 13.0).abs() < 1e-9);
        clip_grads(&mut grads, norm, 1.0).unwrap();
        let clipped = global_grad_norm(&grads).unwrap();
        assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
        // Under the limit: untouched.
        clip_grads(&mut grads, clipped, 5.0).unwrap();
        assert!((global_grad_norm(&grads).unwrap() - clipped).abs() < 1e-12);
        // A NaN anywhere makes the norm non-finite (the step is then skipped).
        let bad = vec![Some(Tensor::new(&[f32::NAN], &Device::Cpu).unwrap())];
        assert!(!global_grad_norm(&bad).unwrap().is_finite());
    }

    #[test]
    fn warmup_then_linear_and_cosine_decay() {
        // peak 1, warm-up 2, total 6.
        let lr = |step, schedule| learning_rate(step, 6, 2, 1.0, schedule, 0.0);
        assert_eq!(lr(1, LrSchedule::Linear), 0.5);
        assert_eq!(lr(2, LrSchedule::Linear), 1.0);
        // Step 3: progress 1/4 → linear 0.75, cosine (1 + cos(π/4)) / 2 = 0.853553.
        assert!((lr(3, LrSchedule::Linear) - 0.75).abs() < 1e-12);
        assert!((lr(3, LrSchedule::Cosine) - 0.853_553_390_6).abs() < 1e-9);
        assert!(lr(6, LrSchedule::Linear).abs() < 1e-12);
        assert!(lr(6, LrSchedule::Cosine).abs() < 1e-12);
        assert_eq!(lr(5, LrSchedule::Constant), 1.0);
        // A floor: decays to 0.1 × peak, and past the end stays there.
        assert!((learning_rate(9, 6, 2, 1.0, LrSchedule::Cosine, 0.1) - 0.1).abs() < 1e-12);
        // No warm-up: the first step already decays a little.
        assert!(learning_rate(1, 4, 0, 1.0, LrSchedule::Linear, 0.0) == 0.75);
    }
}
