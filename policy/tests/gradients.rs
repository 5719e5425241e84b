//! Gradients that are real: LoRA A/B gradients of a 2-layer model match central finite
//! differences (in f64), for both families. A gradient that stopped at a fused op (no
//! backward in candle 0.11) would be missing or wrong here — the inference-mode check at
//! the end shows this test notices exactly that.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use tgrpo_policy::scoring::ScoreSequence;
use tgrpo_policy::{
    DropoutRng, Family, ForwardMode, LoraAdapter, LoraConfig, LoraInit, Model, TrainableAdapter,
    tiny,
};

fn batch() -> Vec<ScoreSequence> {
    vec![
        ScoreSequence {
            tokens: vec![3, 50, 97, 120, 7, 8, 250, 33, 60],
            score_from: 3,
        },
        ScoreSequence {
            tokens: vec![11, 12, 200, 4, 5],
            score_from: 2,
        },
        ScoreSequence {
            tokens: vec![290, 1, 2, 77, 180, 181, 14],
            score_from: 1,
        },
    ]
}

/// A scalar loss from the per-token log-probs: a fixed weighted sum (weights of both signs,
/// so no term can hide another).
fn loss(model: &Model, adapter: &LoraAdapter, mode: ForwardMode) -> Tensor {
    let scores = model
        .score(&batch(), Some(adapter), mode, 1.0, false)
        .unwrap();
    let (b, c) = scores.logprobs.dims2().unwrap();
    let weights: Vec<f64> = (0..b * c)
        .map(|i| ((i * 7 % 11) as f64 - 5.0) / 5.0)
        .collect();
    let weights = Tensor::from_vec(weights, (b, c), &Device::Cpu)
        .unwrap()
        .to_dtype(scores.logprobs.dtype())
        .unwrap();
    (scores.logprobs * weights).unwrap().sum_all().unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn perturbed(var: &Var, index: usize, delta: f64) {
    let mut values: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    values[index] += delta;
    var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
        .unwrap();
}

fn check_family(family: Family) {
    let model = tiny::model(family, 21, &Device::Cpu, DType::F64).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..Default::default()
    };
    let init = LoraAdapter::init(
        model.config(),
        &cfg,
        LoraInit::Random { bound: 1.0 },
        5,
        &Device::Cpu,
        DType::F64,
    )
    .unwrap();
    let trainable = TrainableAdapter::from_adapter(&init).unwrap();
    let grads = loss(&model, trainable.adapter(), ForwardMode::train_no_dropout())
        .backward()
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let eps = 1e-5;
    let mut worst_rel = 0f64;
    let mut checked = 0;
    for (name, var) in trainable.vars() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{family:?}: no gradient for {name}"));
        let grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
        for _ in 0..3 {
            let index = rng.random_range(0..grad.len());
            perturbed(var, index, eps);
            let plus = scalar(&loss(
                &model,
                trainable.adapter(),
                ForwardMode::train_no_dropout(),
            ));
            perturbed(var, index, -2.0 * eps);
            let minus = scalar(&loss(
                &model,
                trainable.adapter(),
                ForwardMode::train_no_dropout(),
            ));
            perturbed(var, index, eps);
            let numeric = (plus - minus) / (2.0 * eps);
            let analytic = grad[index];
            let rel = (numeric - analytic).abs() / numeric.abs().max(analytic.abs()).max(1e-3);
            worst_rel = worst_rel.max(rel);
            checked += 1;
            assert!(
                rel < 1e-5,
                "{family:?} {name}[{index}]: analytic {analytic}, numeric {numeric}, rel {rel}"
            );
        }
    }
    println!("{family:?}: {checked} entries checked, worst relative error {worst_rel:e}");
    // Every one of the 2 layers × 7 targets × {A, B} has a gradient.
    assert_eq!(trainable.vars().len(), 2 * 7 * 2);
}

#[test]
fn lora_gradients_match_finite_differences_qwen2() {
    check_family(Family::Qwen2);
}

#[test]
fn lora_gradients_match_finite_differences_llama() {
    check_family(Family::Llama);
}

#[test]
fn the_fused_inference_path_would_lose_gradients() {
    // The same check through the fused kernels: the q/k adapters sit behind RoPE and the
    // softmax, whose fused forms have no backward, so their gradients are absent or wrong.
    // f32: candle's fused kernels have no f64 implementation.
    let model = tiny::model(Family::Qwen2, 21, &Device::Cpu, DType::F32).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..Default::default()
    };
    let init = LoraAdapter::init(
        model.config(),
        &cfg,
        LoraInit::Random { bound: 1.0 },
        5,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let trainable = TrainableAdapter::from_adapter(&init).unwrap();
    let train = loss(&model, trainable.adapter(), ForwardMode::train_no_dropout())
        .backward()
        .unwrap();
    let fused = loss(&model, trainable.adapter(), ForwardMode::Inference)
        .backward()
        .unwrap();
    let (name, var) = trainable
        .vars()
        .iter()
        .find(|(n, _)| n.contains("layers.0.self_attn.q_proj.lora_A"))
        .unwrap();
    let train_grad = train
        .get(var.as_tensor())
        .expect("train mode has the q gradient");
    let norm = scalar(&train_grad.sqr().unwrap().sum_all().unwrap());
    assert!(norm > 1e-8, "{name}: train-mode gradient vanishes");
    match fused.get(var.as_tensor()) {
        None => {}
        Some(g) => {
            let diff = scalar(
                &(g - train_grad)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_keepdim(0)
                    .unwrap()
                    .max_keepdim(1)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .squeeze(0)
                    .unwrap(),
            );
            assert!(
                diff > 1e-6,
                "{name}: fused path unexpectedly has the right gradient"
            );
        }
    }
}

#[test]
fn dropout_is_seeded_and_resumable() {
    let model = tiny::model(Family::Llama, 2, &Device::Cpu, DType::F32).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.3,
        ..Default::default()
    };
    let init = LoraAdapter::init(
        model.config(),
        &cfg,
        LoraInit::Random { bound: 1.0 },
        5,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let value = |rng: &mut DropoutRng| {
        scalar(&loss(
            &model,
            &init,
            ForwardMode::Train { dropout: Some(rng) },
        ))
    };
    let mut rng = DropoutRng::new(42);
    let first = value(&mut rng);
    let saved = rng.state();
    let second = value(&mut rng);
    assert_ne!(first, second, "consecutive steps draw different masks");
    let mut resumed = DropoutRng::from_state(saved);
    assert_eq!(
        value(&mut resumed),
        second,
        "a restored RNG redraws the same masks"
    );
    let mut same_seed = DropoutRng::new(42);
    assert_eq!(value(&mut same_seed), first);
    let no_dropout = scalar(&loss(&model, &init, ForwardMode::train_no_dropout()));
    assert_ne!(no_dropout, first);
}

#[test]
fn a_few_sgd_steps_lower_the_loss() {
    let model = tiny::model(Family::Qwen2, 4, &Device::Cpu, DType::F32).unwrap();
    let cfg = LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        ..Default::default()
    };
    let trainable =
        TrainableAdapter::new(model.config(), &cfg, 1, &Device::Cpu, DType::F32).unwrap();
    // Negative mean log-likelihood of the completions.
    let nll = |adapter: &LoraAdapter| {
        let s = model
            .score(
                &batch(),
                Some(adapter),
                ForwardMode::train_no_dropout(),
                1.0,
                false,
            )
            .unwrap();
        (s.logprobs.sum_all().unwrap()
            / s.mask.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
            .unwrap()
            .neg()
            .unwrap()
    };
    let start = scalar(&nll(trainable.adapter()));
    let mut sgd =
        <candle_nn::SGD as candle_nn::Optimizer>::new(trainable.all_vars(), 0.05).unwrap();
    let mut last = start;
    for _ in 0..5 {
        let loss = nll(trainable.adapter());
        last = scalar(&loss);
        candle_nn::Optimizer::backward_step(&mut sgd, &loss).unwrap();
    }
    let end = scalar(&nll(trainable.adapter()));
    println!("nll {start} -> {end}");
    assert!(
        end < start - 0.05,
        "loss did not drop: {start} -> {end} (last seen {last})"
    );
}
