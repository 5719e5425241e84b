//! `tgrpo check executor|model|lora|nats|all`: quick self-tests of one component each,
//! against the endpoints and files the run config names, as the seed's
//! `test_components` did. Each check ends in one line a person (or a script) can read:
//!
//! ```text
//! PASS executor 10.0.0.7:50051: passing program passed (2/2 tests, 41 ms), failing program failed (1/2 tests, 38 ms)
//! FAIL nats nats://nats:4222: cannot connect: connection refused — fix: start nats-server with JetStream ...
//! ```
//!
//! A check never returns an error: whatever went wrong becomes its FAIL line, with the
//! fix to try. The teacher check lives in the CLI (it needs the teacher client's flags);
//! it prints the same kind of line.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use tgrpo_executor::proto::{ScoreRequest, ScoreResponse, Verdict};
use tgrpo_executor::{ClientConfig, ExecutorConfig, Scorer};
use tgrpo_learner::backend::{ScoreMode, TokenSequence, TrainablePolicy};
use tgrpo_learner::optim::{AdamW, AdamWParams};
use tgrpo_learner::policy::LoraPolicy;
use tgrpo_pipeline::TgrpoConfig;
use tgrpo_policy::chat::Message;
use tgrpo_policy::{
    ForwardMode, GenerationRequest, LoraAdapter, LoraConfig, Policy, SamplingParams, ScoreSequence,
};

use crate::health::error_chain;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// The component works.
    Pass,
    /// It does not; the line says what happened and what to try.
    Fail,
    /// Not checked: the run config does not use the component.
    Skip,
}

/// One check's verdict: what the `PASS`/`FAIL`/`SKIP` line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// What was checked, with where (`executor 10.0.0.7:50051`, `model Qwen/...`).
    pub name: String,
    /// How it ended.
    pub status: CheckStatus,
    /// What was seen (PASS, SKIP) or what happened (FAIL).
    pub detail: String,
    /// The fix to try (FAIL only).
    pub fix: Option<String>,
}

impl CheckResult {
    /// A passed check.
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: CheckStatus::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A failed check with the fix to try.
    pub fn fail(name: impl Into<String>, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: CheckStatus::Fail,
            detail: what.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check not run, and why.
    pub fn skip(name: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: CheckStatus::Skip,
            detail: why.into(),
            fix: None,
        }
    }

    /// Whether it failed (a skipped check did not).
    pub fn failed(&self) -> bool {
        self.status == CheckStatus::Fail
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.status {
            CheckStatus::Pass => "PASS",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skip => "SKIP",
        };
        write!(f, "{word} {}: {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// executor

/// The probe problem: a program that passes both tests, and one that fails one.
const PASSING_CODE: &str = "def add(a, b):\n    return a + b\n";
const FAILING_CODE: &str = "def add(a, b):\n    return a - b\n";
const PROBE_TESTS: [&str; 2] = ["assert add(2, 0) == 2", "assert add(2, 3) == 5"];

fn probe_request(id: &str, code: &str) -> ScoreRequest {
    ScoreRequest {
        id: id.to_string(),
        code: code.to_string(),
        tests: PROBE_TESTS.iter().map(|test| test.to_string()).collect(),
        timeout_s: Some(10.0),
        ..ScoreRequest::default()
    }
}

/// Checks every executor in `endpoints` (one line each): a passing and a failing program
/// must come back `PASSED` and `FAILED`. With no endpoints, starts an in-process sandbox
/// pool from `config` (its isolation self-check runs at start) and checks that instead.
pub async fn check_executors(endpoints: &[String], config: &ExecutorConfig) -> Vec<CheckResult> {
    if endpoints.is_empty() {
        return vec![check_local_executor(config).await];
    }
    let mut results = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        results.push(check_remote_executor(endpoint).await);
    }
    results
}

async fn check_remote_executor(endpoint: &str) -> CheckResult {
    let name = format!("executor {endpoint}");
    let unreachable_fix = format!(
        "start `tgrpo executor --listen {endpoint}` on that host (or open the port), or \
         correct [rollout] executor_endpoints / --executor"
    );
    let client = ClientConfig {
        max_attempts: 1,
        connect_timeout_s: 5.0,
        ..ClientConfig::default()
    };
    let scorer = match Scorer::remote(&[endpoint.to_string()], client) {
        Ok(scorer) => scorer,
        Err(err) => {
            return CheckResult::fail(
                name,
                format!("not a usable endpoint: {err}"),
                "write executor endpoints as host:port or http://host:port",
            );
        }
    };
    match probe_scorer(&scorer).await {
        Ok(detail) => CheckResult::pass(name, detail),
        Err(ProbeError::Unreachable(what)) => CheckResult::fail(name, what, unreachable_fix),
        Err(ProbeError::WrongVerdict(what)) => CheckResult::fail(
            name,
            what,
            "the executor answers but scores wrongly: read its log (it prints its sandbox \
             self-check at start) and check python3 on that host",
        ),
    }
}

async fn check_local_executor(config: &ExecutorConfig) -> CheckResult {
    let name = "executor (in-process sandbox)";
    let started = Instant::now();
    let scorer = match Scorer::local(config.clone()).await {
        Ok(scorer) => scorer,
        Err(err) => {
            return CheckResult::fail(
                name,
                format!("the sandbox pool did not start: {err}"),
                "run as root on a kernel with user, pid, mount and net namespaces and \
                 seccomp (in a container: privileged, or CAP_SYS_ADMIN with seccomp and \
                 AppArmor unconfined), with python3 at [executor] python",
            );
        }
    };
    let start_ms = started.elapsed().as_millis();
    let isolation = scorer
        .isolation()
        .map(|report| {
            if report.sandboxed {
                format!(
                    "sandboxed (namespaces {}, seccomp mode {})",
                    report.execution_namespaces.join(","),
                    report.seccomp_mode
                )
            } else {
                "NOT sandboxed (unsafe_no_sandbox)".to_string()
            }
        })
        .unwrap_or_default();
    let slots = scorer.pool().map_or(0, |pool| pool.slots());
    let result = probe_scorer(&scorer).await;
    scorer.close().await;
    match result {
        Ok(detail) => CheckResult::pass(
            name,
            format!("{slots} slot(s) started in {start_ms} ms, {isolation}; {detail}"),
        ),
        Err(ProbeError::Unreachable(what) | ProbeError::WrongVerdict(what)) => CheckResult::fail(
            name,
            what,
            "check python3 ([executor] python) and the sandbox limits in [executor]; the \
             executor's log shows the sandbox self-check",
        ),
    }
}

enum ProbeError {
    Unreachable(String),
    WrongVerdict(String),
}

async fn probe_scorer(scorer: &Scorer) -> Result<String, ProbeError> {
    let score = |id: &str, code: &str| {
        let request = probe_request(id, code);
        async move {
            scorer
                .score(request)
                .await
                .map_err(|err| ProbeError::Unreachable(error_chain(&err)))
        }
    };
    let passing = score("check-pass", PASSING_CODE).await?;
    expect_verdict(&passing, Verdict::Passed, "passing")?;
    let failing = score("check-fail", FAILING_CODE).await?;
    expect_verdict(&failing, Verdict::Failed, "failing")?;
    Ok(format!(
        "passing program passed ({}/{} tests, {} ms), failing program failed ({}/{} tests, {} ms)",
        passing.tests_passed,
        passing.tests_total,
        passing.duration_ms,
        failing.tests_passed,
        failing.tests_total,
        failing.duration_ms
    ))
}

fn expect_verdict(response: &ScoreResponse, want: Verdict, which: &str) -> Result<(), ProbeError> {
    if response.verdict == want as i32 {
        return Ok(());
    }
    Err(ProbeError::WrongVerdict(format!(
        "the {which} program came back {} instead of {} ({})",
        tgrpo_executor::metrics::verdict_label(response.verdict),
        tgrpo_executor::metrics::verdict_label(want as i32),
        response.detail
    )))
}

// ---------------------------------------------------------------------------------------
// model and lora

const MODEL_FIX: &str = "check [model] source (an HF directory with config.json, \
    *.safetensors and tokenizer.json; a .gguf file; or a hub id, with network or the \
    model in HF_HOME's cache) and [model] device/dtype (a cuda device needs a build with \
    the cuda feature)";

/// The text the tokenizer must give back unchanged.
const ROUND_TRIP_TEXT: &str = "def add(a, b):\n    return a + b\n";

/// The check's probe conversation.
fn probe_messages() -> Vec<Message> {
    vec![Message::user(
        "Write a python function add(a, b) that returns the sum of a and b.",
    )]
}

/// New tokens of the check's greedy generation.
const GENERATED_TOKENS: usize = 16;

fn model_name(config: &TgrpoConfig) -> String {
    format!("model {}", config.model.source)
}

/// Loads the configured model (`[model] source`, device, dtype; the demo model is built
/// first when the config names it), or the FAIL line of why not.
async fn load_model(config: &TgrpoConfig) -> Result<(Policy, f64), CheckResult> {
    let started = Instant::now();
    let spec = tgrpo_pipeline::model::resolve_model(config).map_err(|err| {
        CheckResult::fail(
            model_name(config),
            format!("cannot resolve: {err}"),
            MODEL_FIX,
        )
    })?;
    let policy = tgrpo_pipeline::model::load_policy(config, &spec)
        .await
        .map_err(|err| {
            CheckResult::fail(model_name(config), format!("cannot load: {err}"), MODEL_FIX)
        })?;
    Ok((policy, started.elapsed().as_secs_f64()))
}

/// `tgrpo check model`: loads the model, round-trips text through the tokenizer, renders
/// the chat template and generates a few greedy tokens twice (they must agree).
pub async fn check_model(config: &TgrpoConfig) -> CheckResult {
    match load_model(config).await {
        Ok((policy, seconds)) => model_self_test(config, policy, seconds).await,
        Err(fail) => fail,
    }
}

async fn model_self_test(config: &TgrpoConfig, policy: Policy, load_s: f64) -> CheckResult {
    let name = model_name(config);
    let outcome = tokio::task::spawn_blocking(move || model_probe(&policy, load_s)).await;
    match outcome {
        Ok(Ok(detail)) => CheckResult::pass(name, detail),
        Ok(Err((what, fix))) => CheckResult::fail(name, what, fix),
        Err(join) => CheckResult::fail(name, format!("the check thread failed: {join}"), MODEL_FIX),
    }
}

fn model_probe(policy: &Policy, load_s: f64) -> Result<String, (String, String)> {
    let model_config = policy.model().config();
    let tokenizer = policy.tokenizer();
    let tokenizer_fix = || {
        "the tokenizer does not match the model: use the tokenizer.json (or GGUF) that \
         came with these weights"
            .to_string()
    };
    let ids = tokenizer
        .encode(ROUND_TRIP_TEXT, false)
        .map_err(|err| (format!("tokenizer cannot encode: {err}"), tokenizer_fix()))?;
    let back = tokenizer
        .decode(&ids, false)
        .map_err(|err| (format!("tokenizer cannot decode: {err}"), tokenizer_fix()))?;
    if back != ROUND_TRIP_TEXT {
        return Err((
            format!("tokenizer round trip changed {ROUND_TRIP_TEXT:?} into {back:?}"),
            tokenizer_fix(),
        ));
    }
    if let Some(&id) = ids
        .iter()
        .find(|&&id| id as usize >= model_config.vocab_size)
    {
        return Err((
            format!(
                "token id {id} is outside the model's vocabulary of {}",
                model_config.vocab_size
            ),
            tokenizer_fix(),
        ));
    }
    let template = policy.chat_template();
    let template_fix = || {
        "give the model a chat template (tokenizer_config.json `chat_template`, or the \
         GGUF's tokenizer.chat_template)"
            .to_string()
    };
    let rendered = template.render(&probe_messages(), true).map_err(|err| {
        (
            format!("chat template does not render: {err}"),
            template_fix(),
        )
    })?;
    let prompt = policy.chat_prompt(&probe_messages()).map_err(|err| {
        (
            format!("chat prompt does not tokenize: {err}"),
            template_fix(),
        )
    })?;
    if !rendered.contains("add(a, b)") || prompt.is_empty() {
        return Err((
            format!("the chat template dropped the user message: {rendered:?}"),
            template_fix(),
        ));
    }
    let request = GenerationRequest {
        prompt: prompt.clone(),
        params: SamplingParams::greedy(GENERATED_TOKENS),
    };
    let started = Instant::now();
    let generations = policy
        .generate_with(&[request.clone(), request], None)
        .map_err(|err| (format!("generation failed: {err}"), MODEL_FIX.to_string()))?;
    let seconds = started.elapsed().as_secs_f64();
    let [first, second] = generations.as_slice() else {
        return Err((
            format!("asked for 2 generations, got {}", generations.len()),
            MODEL_FIX.to_string(),
        ));
    };
    if first.tokens.is_empty() || first.tokens != second.tokens {
        return Err((
            format!(
                "greedy generation is not deterministic (or empty): {:?} vs {:?}",
                first.tokens, second.tokens
            ),
            "check [model] dtype and device: the same prompt decoded greedily twice in one \
             batch must give the same tokens"
                .to_string(),
        ));
    }
    let generated: usize = generations.iter().map(|g| g.tokens.len()).sum();
    Ok(format!(
        "{:?}, {} layers, hidden {}, vocab {}, {} {:?}, loaded in {load_s:.1} s; tokenizer \
         round trip ok ({} tokens); chat template from {}{} ({} prompt tokens); greedy: \
         {} tokens ({}), {:.1} tokens/s, {:?}",
        model_config.family,
        model_config.num_hidden_layers,
        model_config.hidden_size,
        model_config.vocab_size,
        device_name(policy),
        policy.model().dtype(),
        ids.len(),
        template.origin(),
        if template.is_fallback() {
            " (FALLBACK: the model has none)"
        } else {
            ""
        },
        prompt.len(),
        first.tokens.len(),
        first.finish_reason.as_str(),
        generated as f64 / seconds.max(1e-9),
        preview(&first.text, 60)
    ))
}

fn device_name(policy: &Policy) -> &'static str {
    if policy.model().device().is_cpu() {
        "cpu"
    } else {
        "gpu"
    }
}

/// `tgrpo check lora`: loads the model and runs [`lora_self_test`] on it.
pub async fn check_lora(config: &TgrpoConfig) -> CheckResult {
    match load_model(config).await {
        Ok((policy, _)) => lora_self_test(config, policy).await,
        Err(mut fail) => {
            fail.name = lora_name(config);
            fail
        }
    }
}

/// `tgrpo check model` and `tgrpo check lora` on one loaded model (the model is loaded
/// once: `check all` on a big model).
pub async fn check_model_and_lora(config: &TgrpoConfig) -> Vec<CheckResult> {
    match load_model(config).await {
        Ok((policy, seconds)) => vec![
            model_self_test(config, policy.clone(), seconds).await,
            lora_self_test(config, policy).await,
        ],
        Err(fail) => {
            let mut lora = fail.clone();
            lora.name = lora_name(config);
            vec![fail, lora]
        }
    }
}

fn lora_name(config: &TgrpoConfig) -> String {
    format!(
        "lora r={} alpha={} on {}",
        config.lora.r, config.lora.alpha, config.model.source
    )
}

/// Learning rate of the check's one optimizer step.
const CHECK_LEARNING_RATE: f64 = 1e-4;

/// Attaches a fresh adapter with the run's `[lora]` settings (dropout off, so the check
/// is deterministic), takes one AdamW step on the cross-entropy of a short answer and
/// checks that every adapter tensor got a finite gradient and that the loss went down;
/// then saves the adapter as a PEFT directory, loads it back and checks that the loaded
/// adapter gives the same per-token log-probs and entropies (the whole predictive
/// distribution's) as the one saved.
pub async fn lora_self_test(config: &TgrpoConfig, policy: Policy) -> CheckResult {
    let name = lora_name(config);
    let mut lora = config.lora.clone();
    lora.dropout = 0.0;
    let seed = config.training.seed;
    let scratch = std::env::temp_dir().join(format!(
        "tgrpo-check-lora-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    let dir = scratch.clone();
    let outcome = tokio::task::spawn_blocking(move || lora_probe(&policy, &lora, seed, &dir)).await;
    let _ = std::fs::remove_dir_all(&scratch);
    match outcome {
        Ok(Ok(detail)) => CheckResult::pass(name, detail),
        Ok(Err((what, fix))) => CheckResult::fail(name, what, fix),
        Err(join) => CheckResult::fail(
            name,
            format!("the check thread failed: {join}"),
            "report this as a bug with the model and [lora] section",
        ),
    }
}

type ProbeResult<T> = Result<T, (String, String)>;

fn lora_probe(policy: &Policy, lora: &LoraConfig, seed: u64, dir: &Path) -> ProbeResult<String> {
    let lora_fix = || {
        "check [lora] (r, alpha, target_modules must name this model's projections) and \
         [model] dtype"
            .to_string()
    };
    let fail = |what: String| (what, lora_fix());
    let prompt = policy
        .chat_prompt(&probe_messages())
        .map_err(|err| fail(format!("chat prompt: {err}")))?;
    let answer = policy
        .tokenizer()
        .encode("```python\ndef add(a, b):\n    return a + b\n```", false)
        .map_err(|err| fail(format!("tokenizer: {err}")))?;
    let sequence = TokenSequence {
        score_from: prompt.len(),
        tokens: prompt.iter().chain(&answer).copied().collect(),
    };
    let model = Arc::clone(policy.model());
    let mut trainable = LoraPolicy::new(model, lora, seed, policy.base_model_name())
        .map_err(|err| fail(format!("cannot attach the adapter: {err}")))?;
    let vars = trainable.trainable_vars();
    if vars.is_empty() {
        return Err(fail("the adapter has no trainable tensors".into()));
    }

    let loss_of = |policy: &mut LoraPolicy, mode: ScoreMode| -> ProbeResult<Tensor> {
        let scores = policy
            .score(std::slice::from_ref(&sequence), mode, 1.0, false)
            .map_err(|err| fail(format!("scoring failed: {err}")))?;
        sft_loss(&scores.logprobs, &scores.mask).map_err(|err| fail(format!("loss: {err}")))
    };
    let scalar = |loss: &Tensor| -> ProbeResult<f64> {
        loss.to_scalar::<f32>()
            .map(f64::from)
            .map_err(|err| fail(format!("loss value: {err}")))
    };
    let before = scalar(&loss_of(&mut trainable, ScoreMode::Frozen)?)?;
    let train_loss = loss_of(&mut trainable, ScoreMode::Train)?;
    let grads = train_loss
        .backward()
        .map_err(|err| fail(format!("backward pass failed: {err}")))?;
    let mut grad_list = Vec::with_capacity(vars.len());
    let mut missing = Vec::new();
    let mut nonzero = 0usize;
    let mut norm_sq = 0.0f64;
    for (peft_name, var) in &vars {
        match grads.get(var.as_tensor()) {
            Some(grad) => {
                let sq = grad
                    .to_dtype(DType::F32)
                    .and_then(|g| g.sqr())
                    .and_then(|g| g.sum_all())
                    .and_then(|g| g.to_scalar::<f32>())
                    .map_err(|err| fail(format!("gradient of {peft_name}: {err}")))?;
                if !sq.is_finite() {
                    return Err(fail(format!("the gradient of {peft_name} is not finite")));
                }
                if sq > 0.0 {
                    nonzero += 1;
                }
                norm_sq += f64::from(sq);
                grad_list.push(Some(grad.clone()));
            }
            None => {
                missing.push(peft_name.clone());
                grad_list.push(None);
            }
        }
    }
    if !missing.is_empty() {
        return Err(fail(format!(
            "{} of {} adapter tensors got no gradient (first: {})",
            missing.len(),
            vars.len(),
            missing[0]
        )));
    }
    if norm_sq <= 0.0 {
        return Err(fail("every adapter gradient is zero".into()));
    }
    let params = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.0,
    };
    let mut optimizer =
        AdamW::new(vars.clone(), params).map_err(|err| fail(format!("optimizer: {err}")))?;
    optimizer
        .step(&grad_list, CHECK_LEARNING_RATE)
        .map_err(|err| fail(format!("optimizer step: {err}")))?;
    let after = scalar(&loss_of(&mut trainable, ScoreMode::Frozen)?)?;
    if after >= before {
        return Err(fail(format!(
            "the loss did not go down after one step at lr {CHECK_LEARNING_RATE}: {before:.6} -> {after:.6}"
        )));
    }

    // PEFT round trip of the trained (non-zero) adapter.
    let peft_fix =
        || "check that the output directory is writable and the disk not full".to_string();
    trainable.save_adapter(dir).map_err(|err| {
        (
            format!("cannot save the PEFT adapter to {}: {err}", dir.display()),
            peft_fix(),
        )
    })?;
    let model = policy.model();
    let (loaded, _) = LoraAdapter::load_peft(dir, model.config(), model.device(), DType::F32)
        .map_err(|err| fail(format!("cannot load the saved PEFT adapter back: {err}")))?;
    let saved = trainable
        .snapshot()
        .map_err(|err| fail(format!("adapter snapshot: {err}")))?;
    let probe = [ScoreSequence {
        tokens: sequence.tokens.clone(),
        score_from: sequence.score_from,
    }];
    let score_with = |adapter: &LoraAdapter| {
        model
            .score(&probe, Some(adapter), ForwardMode::Inference, 1.0, true)
            .map_err(|err| fail(format!("scoring with the adapter: {err}")))
    };
    let original = score_with(&saved)?;
    let reloaded = score_with(&loaded)?;
    let logprob_diff = max_abs_diff(&original.logprobs, &reloaded.logprobs)
        .map_err(|err| fail(format!("comparing log-probs: {err}")))?;
    let entropy_diff = match (&original.entropy, &reloaded.entropy) {
        (Some(a), Some(b)) => {
            max_abs_diff(a, b).map_err(|err| fail(format!("comparing entropies: {err}")))?
        }
        _ => 0.0,
    };
    if logprob_diff > 0.0 || entropy_diff > 0.0 {
        return Err(fail(format!(
            "the PEFT adapter loaded back scores differently from the one saved (max \
             |Δ log-prob| {logprob_diff:e}, max |Δ entropy| {entropy_diff:e})"
        )));
    }
    let files = peft_files(dir);
    Ok(format!(
        "{} adapter tensors, {nonzero} with a non-zero gradient (A is zero-gradient while \
         B = 0), grad norm {:.3e}; one AdamW step at lr {CHECK_LEARNING_RATE}: loss \
         {before:.4} -> {after:.4}; PEFT save/load ({files}) gives identical log-probs \
         and entropies on {} tokens",
        vars.len(),
        norm_sq.sqrt(),
        sequence.tokens.len() - sequence.score_from
    ))
}

/// Mean negative log-likelihood over the unmasked tokens.
fn sft_loss(logprobs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let logprobs = logprobs.to_dtype(DType::F32)?;
    let mask = mask.to_dtype(DType::F32)?;
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    logprobs.mul(&mask)?.sum_all()?.neg()? / f64::from(count)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let diff = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    Ok(f64::from(diff))
}

fn peft_files(dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(" + ")
}

// ---------------------------------------------------------------------------------------
// nats

/// Bytes the NATS check stores and reads back: over the default 1 MiB message limit, so
/// the object store must chunk it as it does adapters.
const NATS_PROBE_BYTES: usize = 1_536 * 1024;

/// `tgrpo check nats`: connects to `url`, checks that JetStream is enabled, and puts and
/// gets a 1.5 MiB object through a scratch object-store bucket (deleted afterwards).
pub async fn check_nats(url: &str, timeout: Duration) -> CheckResult {
    let name = format!("nats {url}");
    let connect_fix = format!(
        "start nats-server with JetStream (`nats-server -js`) at {url}, or correct \
         [broadcast] url / --nats-url"
    );
    let options = async_nats::ConnectOptions::new().connection_timeout(timeout);
    let client = match tokio::time::timeout(timeout, options.connect(url)).await {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => {
            return CheckResult::fail(
                name,
                format!("cannot connect: {}", error_chain(&err)),
                connect_fix,
            );
        }
        Err(_) => {
            return CheckResult::fail(
                name,
                format!("no connection within {:.0} s", timeout.as_secs_f64()),
                connect_fix,
            );
        }
    };
    let info = client.server_info();
    let jetstream_fix = "restart nats-server with JetStream on (`nats-server -js`, or a \
        `jetstream {}` block in its config) and give it storage";
    if !info.jetstream {
        return CheckResult::fail(
            name,
            format!("nats-server {} has JetStream disabled", info.version),
            jetstream_fix,
        );
    }
    let jetstream = async_nats::jetstream::new(client.clone());
    let round_trip = tokio::time::timeout(timeout * 4, object_round_trip(&jetstream)).await;
    let result = match round_trip {
        Ok(Ok(detail)) => CheckResult::pass(
            name,
            format!(
                "nats-server {}, JetStream on, max_payload {} bytes; {detail}",
                info.version, info.max_payload
            ),
        ),
        Ok(Err(what)) => CheckResult::fail(name, what, jetstream_fix),
        Err(_) => CheckResult::fail(
            name,
            format!(
                "the object store round trip took over {:.0} s",
                (timeout * 4).as_secs_f64()
            ),
            jetstream_fix,
        ),
    };
    drop(client);
    result
}

async fn object_round_trip(jetstream: &async_nats::jetstream::Context) -> Result<String, String> {
    use tokio::io::AsyncReadExt;

    // No `query_account()`: async-nats 0.51 cannot parse the account info of nats-server
    // 2.9 (Debian 12's), and the round trip below is the proof that matters.
    let bucket = format!("tgrpo-check-{}-{}", std::process::id(), unique_suffix());
    let store = jetstream
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: bucket.clone(),
            description: Some("tgrpo check nats (deleted at once)".into()),
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .map_err(|err| {
            format!(
                "cannot create object-store bucket {bucket}: {}",
                error_chain(&err)
            )
        })?;
    let payload: Vec<u8> = (0..NATS_PROBE_BYTES)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let outcome = async {
        store
            .put("probe", &mut payload.as_slice())
            .await
            .map_err(|err| format!("put into {bucket}: {}", error_chain(&err)))?;
        let mut object = store
            .get("probe")
            .await
            .map_err(|err| format!("get from {bucket}: {}", error_chain(&err)))?;
        let mut back = Vec::with_capacity(payload.len());
        object
            .read_to_end(&mut back)
            .await
            .map_err(|err| format!("read from {bucket}: {err}"))?;
        if back != payload {
            return Err(format!(
                "the object read back from {bucket} differs from the one stored ({} bytes \
                 back, {} stored)",
                back.len(),
                payload.len()
            ));
        }
        Ok(started.elapsed())
    }
    .await;
    let deleted = jetstream.delete_object_store(&bucket).await;
    let elapsed = outcome?;
    if let Err(err) = deleted {
        tracing::warn!(%bucket, err = %error_chain(&err), "could not delete the check's bucket");
    }
    Ok(format!(
        "object store put/get of {} bytes round trip in {} ms",
        payload.len(),
        elapsed.as_millis()
    ))
}

// ---------------------------------------------------------------------------------------

/// Where `check all` and the single checks look: the config's endpoints unless flags
/// name others.
#[derive(Debug, Clone, Default)]
pub struct CheckTargets {
    /// Executors to score on; empty: `[rollout] executor_endpoints`, and when that is
    /// empty too, an in-process sandbox.
    pub executors: Vec<String>,
    /// NATS URL; `None`: `[broadcast] url`.
    pub nats_url: Option<String>,
}

impl CheckTargets {
    /// The executors to check.
    pub fn executor_endpoints(&self, config: &TgrpoConfig) -> Vec<String> {
        if self.executors.is_empty() {
            config.rollout.executor_endpoints.clone()
        } else {
            self.executors.clone()
        }
    }

    /// The NATS URL to check.
    pub fn nats_url(&self, config: &TgrpoConfig) -> String {
        self.nats_url
            .clone()
            .unwrap_or_else(|| config.broadcast.url.clone())
    }
}

/// How long the NATS check waits to connect: the config's connect timeout, capped so a
/// dead server fails the check in seconds.
pub fn nats_timeout(config: &TgrpoConfig) -> Duration {
    Duration::from_secs_f64(config.broadcast.connect_timeout_s.clamp(0.5, 5.0))
}

/// The checks of `tgrpo check all` except the teacher's (the CLI adds it): executors,
/// model, lora, nats, in that order.
pub async fn check_all(config: &TgrpoConfig, targets: &CheckTargets) -> Vec<CheckResult> {
    let mut results = check_executors(&targets.executor_endpoints(config), &config.executor).await;
    results.extend(check_model_and_lora(config).await);
    results.push(check_nats(&targets.nats_url(config), nats_timeout(config)).await);
    results
}

fn preview(text: &str, chars: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

/// Nanoseconds of the wall clock: with the process id, names scratch files and buckets
/// that concurrent checks do not share.
fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() % 1_000_000_000_000)
}
