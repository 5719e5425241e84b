//! Batched generation: KV-cache decoding equals full recomputation token by token, scoring
//! reproduces the behaviour log-probs, seeds make requests reproducible independently of
//! their batch, and EOS / stop strings / length end rows correctly.

use candle_core::{D, DType, Device, IndexOp, Tensor};
use std::str::FromStr;
use tgrpo_policy::scoring::ScoreSequence;
use tgrpo_policy::{
    Family, FinishReason, ForwardMode, GenerationRequest, LoraAdapter, LoraConfig, LoraInit, Model,
    SamplingParams, tiny,
};

fn setup(family: Family) -> (Model, LoraAdapter) {
    let model = tiny::model(family, 31, &Device::Cpu, DType::F32).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let adapter = LoraAdapter::init(
        model.config(),
        &cfg,
        LoraInit::Random { bound: 1.0 },
        2,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    (model, adapter)
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![10, 20, 30, 40, 50, 60, 70],
        vec![5],
        vec![100, 101, 102, 250],
        vec![10, 20, 30, 40, 50, 60, 70], // a repeated prompt (shared prefill)
        vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8],
    ]
}

/// Log-prob of each generated token under a full, cache-free forward of prompt + prefix.
fn recomputed_logprobs(
    model: &Model,
    adapter: Option<&LoraAdapter>,
    prompt: &[u32],
    generated: &[u32],
) -> (Vec<f32>, Vec<u32>) {
    let mut all = prompt.to_vec();
    all.extend_from_slice(generated);
    let tokens = Tensor::new(all.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model
        .forward(&tokens, adapter, ForwardMode::Inference)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let mut lps = Vec::new();
    let mut argmaxes = Vec::new();
    for (k, &tok) in generated.iter().enumerate() {
        let row = log_probs.i(prompt.len() - 1 + k).unwrap();
        lps.push(row.i(tok as usize).unwrap().to_scalar::<f32>().unwrap());
        argmaxes.push(row.argmax(0).unwrap().to_scalar::<u32>().unwrap());
    }
    (lps, argmaxes)
}

fn requests(params: impl Fn(usize) -> SamplingParams) -> Vec<GenerationRequest> {
    prompts()
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| GenerationRequest {
            prompt,
            params: params(i),
        })
        .collect()
}

#[test]
fn kv_cache_sampling_equals_full_recomputation() {
    for family in [Family::Qwen2, Family::Llama] {
        let (model, adapter) = setup(family);
        // Different budgets per row: rows leave the batch at different steps (compaction).
        let reqs = requests(|i| SamplingParams {
            max_new_tokens: 6 + 5 * i,
            seed: i as u64,
            ..Default::default()
        });
        let (out, stats) = model
            .generate_with_stats(&reqs, Some(&adapter), None, &[])
            .unwrap();
        // The repeated prompt was prefilled once; finished rows stopped costing decode work.
        assert_eq!(stats.prefills, 4);
        let generated: usize = out.iter().map(|g| g.tokens.len()).sum();
        assert_eq!(stats.decode_row_steps, generated - reqs.len());
        assert_eq!(
            stats.decode_steps,
            out.iter().map(|g| g.tokens.len()).max().unwrap() - 1
        );
        let mut worst = 0f32;
        for (req, generation) in reqs.iter().zip(&out) {
            assert_eq!(generation.finish_reason, FinishReason::Length);
            assert_eq!(generation.tokens.len(), req.params.max_new_tokens);
            let (expected, _) =
                recomputed_logprobs(&model, Some(&adapter), &req.prompt, &generation.tokens);
            for (a, b) in generation.logprobs.iter().zip(&expected) {
                worst = worst.max((a - b).abs());
            }
        }
        println!("{family:?}: sampled vs recomputed log-prob max |diff| {worst:e}");
        assert!(worst < 1e-4, "{family:?}: {worst}");
    }
}

#[test]
fn greedy_kv_cache_decoding_equals_full_recomputation_argmax() {
    let (model, adapter) = setup(Family::Qwen2);
    let reqs = requests(|i| SamplingParams::greedy(4 + 3 * i));
    for adapter in [None, Some(&adapter)] {
        let out = model.generate(&reqs, adapter, None, &[]).unwrap();
        for (req, generation) in reqs.iter().zip(&out) {
            let (_, argmaxes) =
                recomputed_logprobs(&model, adapter, &req.prompt, &generation.tokens);
            assert_eq!(generation.tokens, argmaxes, "prompt {:?}", req.prompt);
            assert!(generation.logprobs.iter().all(|&l| l == 0.0));
        }
    }
}

/// Samples at `temperature` and scores the same tokens at `temperature` (in both forward
/// modes); returns the largest |scored − behaviour| log-prob difference. `score_at` is the
/// temperature handed to the scorer (equal to `temperature` unless a test wants to show
/// the mismatch).
fn scored_vs_behaviour(temperature: f64, score_at: f64) -> f32 {
    let (model, adapter) = setup(Family::Llama);
    let reqs = requests(|i| SamplingParams {
        temperature,
        max_new_tokens: 5 + 2 * i,
        seed: 100 + i as u64,
        ..Default::default()
    });
    let out = model.generate(&reqs, Some(&adapter), None, &[]).unwrap();
    let sequences: Vec<ScoreSequence> = reqs
        .iter()
        .zip(&out)
        .map(|(r, g)| {
            let mut tokens = r.prompt.clone();
            tokens.extend(&g.tokens);
            ScoreSequence {
                tokens,
                score_from: r.prompt.len(),
            }
        })
        .collect();
    let mut worst = 0f32;
    for mode in [ForwardMode::Inference, ForwardMode::train_no_dropout()] {
        let scores = model
            .score(&sequences, Some(&adapter), mode, score_at, true)
            .unwrap();
        let logprobs: Vec<Vec<f32>> = scores.logprobs.to_vec2().unwrap();
        let mask: Vec<Vec<f32>> = scores.mask.to_vec2().unwrap();
        let entropy: Vec<Vec<f32>> = scores.entropy.unwrap().to_vec2().unwrap();
        for (b, generation) in out.iter().enumerate() {
            assert_eq!(scores.num_scored[b], generation.tokens.len());
            for (j, &lp) in generation.logprobs.iter().enumerate() {
                worst = worst.max((logprobs[b][j] - lp).abs());
                assert_eq!(mask[b][j], 1.0);
                assert!(
                    entropy[b][j] > 0.0
                        && entropy[b][j] <= (model.config().vocab_size as f32).ln() + 1e-4
                );
            }
            for j in generation.tokens.len()..mask[b].len() {
                assert_eq!(mask[b][j], 0.0);
                assert_eq!(logprobs[b][j], 0.0);
            }
        }
    }
    println!("T={temperature}, scored at {score_at}: max |scored − sampled| {worst:e}");
    worst
}

#[test]
fn scoring_reproduces_behaviour_logprobs_at_temperature_one() {
    let worst = scored_vs_behaviour(1.0, 1.0);
    assert!(worst < 1e-4, "{worst}");
}

/// The learner scores at the rollout temperature: then the importance weights
/// `exp(logp − behaviour)` of unchanged weights are exactly 1; scoring at T = 1 instead
/// biases them (the control below shows the gap is far above the tolerance).
#[test]
fn scoring_at_the_sampling_temperature_reproduces_behaviour_logprobs() {
    let worst = scored_vs_behaviour(0.7, 0.7);
    assert!(worst < 1e-4, "{worst}");
    let untempered = scored_vs_behaviour(0.7, 1.0);
    assert!(untempered > 1e-2, "{untempered}");
}

#[test]
fn scoring_rejects_a_non_positive_temperature() {
    let (model, adapter) = setup(Family::Qwen2);
    let sequences = [ScoreSequence {
        tokens: vec![1, 2, 3],
        score_from: 1,
    }];
    for bad in [0.0, -1.0, f64::NAN] {
        let err = model
            .score(
                &sequences,
                Some(&adapter),
                ForwardMode::Inference,
                bad,
                false,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("temperature"), "{err}");
    }
}

#[test]
fn same_seed_same_output_whatever_the_batch() {
    let (model, adapter) = setup(Family::Qwen2);
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 50,
        max_new_tokens: 12,
        seed: 7,
        ..Default::default()
    };
    let target = GenerationRequest {
        prompt: vec![10, 20, 30],
        params: params.clone(),
    };
    let alone = model
        .generate(std::slice::from_ref(&target), Some(&adapter), None, &[])
        .unwrap()
        .remove(0);
    let mut batch = requests(|i| SamplingParams {
        max_new_tokens: 3 + i,
        seed: 1000 + i as u64,
        ..Default::default()
    });
    batch.insert(2, target.clone());
    let in_batch = model
        .generate(&batch, Some(&adapter), None, &[])
        .unwrap()
        .remove(2);
    assert_eq!(alone.tokens, in_batch.tokens);
    for (a, b) in alone.logprobs.iter().zip(&in_batch.logprobs) {
        assert!((a - b).abs() < 1e-5);
    }
    let again = model
        .generate(std::slice::from_ref(&target), Some(&adapter), None, &[])
        .unwrap()
        .remove(0);
    assert_eq!(alone, again);
    // Seeds matter: at a high temperature two seeds give different samples.
    let hot = |seed| GenerationRequest {
        params: SamplingParams {
            temperature: 3.0,
            top_p: 1.0,
            top_k: 0,
            seed,
            ..params.clone()
        },
        ..target.clone()
    };
    let a = model
        .generate(&[hot(7), hot(8), hot(7)], Some(&adapter), None, &[])
        .unwrap();
    assert_ne!(a[0].tokens, a[1].tokens);
    assert_eq!(a[0].tokens, a[2].tokens);
}

#[test]
fn eos_and_stop_strings_end_rows() {
    let (model, adapter) = setup(Family::Qwen2);
    let tokenizer = tokenizers::Tokenizer::from_str(&tiny::tokenizer_json()).unwrap();
    let params = SamplingParams {
        max_new_tokens: 40,
        seed: 3,
        ..Default::default()
    };
    let request = GenerationRequest {
        prompt: vec![10, 20, 30, 40],
        params: params.clone(),
    };
    let full = model
        .generate(
            std::slice::from_ref(&request),
            Some(&adapter),
            Some(&tokenizer),
            &[],
        )
        .unwrap()
        .remove(0);
    assert_eq!(full.finish_reason, FinishReason::Length);
    assert_eq!(full.text, tokenizer.decode(&full.tokens, true).unwrap());

    // EOS: end on the token sampled at step 5.
    let eos = full.tokens[5];
    let first = full.tokens.iter().position(|&t| t == eos).unwrap();
    let ended = model
        .generate(
            std::slice::from_ref(&request),
            Some(&adapter),
            Some(&tokenizer),
            &[eos],
        )
        .unwrap()
        .remove(0);
    assert_eq!(ended.finish_reason, FinishReason::Eos);
    assert_eq!(ended.tokens, full.tokens[..=first]);
    assert_eq!(ended.logprobs, full.logprobs[..=first]);
    // The same through a request's stop_token_ids.
    let by_request = GenerationRequest {
        params: SamplingParams {
            stop_token_ids: vec![eos],
            ..params.clone()
        },
        ..request.clone()
    };
    assert_eq!(
        model
            .generate(&[by_request], Some(&adapter), Some(&tokenizer), &[])
            .unwrap()[0]
            .tokens,
        ended.tokens
    );
    // ignore_eos keeps going past model EOS ids.
    let ignoring = GenerationRequest {
        params: SamplingParams {
            ignore_eos: true,
            ..params.clone()
        },
        ..request.clone()
    };
    assert_eq!(
        model
            .generate(&[ignoring], Some(&adapter), Some(&tokenizer), &[eos])
            .unwrap()[0]
            .tokens,
        full.tokens
    );

    // Stop string: a piece of the text the tokens after step 8 produce.
    let prefix_text = tokenizer.decode(&full.tokens[..8], true).unwrap();
    let rest = &full.text[prefix_text.len()..];
    let stop: String = rest.chars().take(2).collect();
    assert!(
        !stop.is_empty(),
        "text after step 8 is empty: {:?}",
        full.text
    );
    let stop_at = full.text.find(&stop).unwrap();
    let stopped_request = GenerationRequest {
        params: SamplingParams {
            stop: vec!["never appears \u{1F600}".into(), stop.clone()],
            ..params
        },
        ..request
    };
    let stopped = model
        .generate(&[stopped_request], Some(&adapter), Some(&tokenizer), &[])
        .unwrap()
        .remove(0);
    assert_eq!(stopped.finish_reason, FinishReason::Stop(stop.clone()));
    assert_eq!(stopped.text, full.text[..stop_at]);
    assert!(full.tokens.starts_with(&stopped.tokens));
    let through = tokenizer.decode(&stopped.tokens, true).unwrap();
    assert!(
        through.contains(&stop),
        "the last token completes the stop string"
    );
    let before = tokenizer
        .decode(&stopped.tokens[..stopped.tokens.len() - 1], true)
        .unwrap();
    assert!(
        !before.contains(&stop),
        "the row stopped as soon as the stop string appeared"
    );
}

#[test]
fn invalid_requests_are_rejected_with_their_index() {
    let (model, _) = setup(Family::Qwen2);
    let ok = GenerationRequest {
        prompt: vec![1, 2],
        params: SamplingParams::default(),
    };
    let cases = [
        GenerationRequest {
            prompt: vec![],
            ..ok.clone()
        },
        GenerationRequest {
            prompt: vec![100_000],
            ..ok.clone()
        },
        GenerationRequest {
            params: SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            ..ok.clone()
        },
        GenerationRequest {
            params: SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            ..ok.clone()
        },
        GenerationRequest {
            params: SamplingParams {
                max_new_tokens: 5000,
                ..Default::default()
            },
            ..ok.clone()
        },
        GenerationRequest {
            params: SamplingParams {
                stop: vec!["x".into()],
                ..Default::default()
            },
            ..ok.clone()
        },
    ];
    for bad in cases {
        let err = model
            .generate(&[ok.clone(), bad.clone()], None, None, &[])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("request 1:"), "{bad:?}: {err}");
    }
}
