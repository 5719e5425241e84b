//! `tgrpo check teacher`: is the teacher reachable, does it serve the configured model,
//! and does it think? Sends one small problem and reports what came back (the reasoning
//! and where it arrived, the code, tokens, latency), then one `PASS teacher URL: ...` or
//! `FAIL teacher URL: ... — fix: ...` line. Fails when the teacher cannot be reached or
//! its answer has no reasoning (with thinking on) or no code.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_launcher::checks::CheckResult;
use tgrpo_teacher::{HttpTeacher, Teacher, TeacherConfig, TraceSource, Unverified};

use super::run_config::load_run_config;
use super::teacher_args::TeacherArgs;

/// Arguments of `tgrpo check teacher`.
#[derive(Debug, Args)]
pub struct CheckTeacherArgs {
    /// The run config: its `[teacher]` section is checked (the teacher flags override it).
    #[arg(long, env = "TGRPO_CONFIG", conflicts_with = "teacher_config")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub teacher: TeacherArgs,
}

fn probe_problem() -> Problem {
    Problem {
        task_id: "check-teacher".into(),
        text: "Write a function to add two numbers.".into(),
        reference: None,
        tests: vec!["assert add(2, 3) == 5".into()],
        setup_code: String::new(),
        format: TestFormat::Mbpp,
        entry_point: Some("add".into()),
        prompt: None,
    }
}

/// Runs the check: the report lines, then the verdict line (returned, not printed).
pub async fn run(args: CheckTeacherArgs) -> anyhow::Result<CheckResult> {
    anyhow::ensure!(
        args.teacher.local_model.is_none(),
        "`tgrpo check teacher` checks the HTTP teacher; --teacher-local-model has nothing to connect to"
    );
    let config = match &args.config {
        Some(path) => args
            .teacher
            .to_config_over(load_run_config(path)?.teacher)?,
        None => args.teacher.to_config()?,
    };
    Ok(check(config).await)
}

/// Checks the HTTP teacher `config` names, printing what came back; the verdict names the
/// teacher's URL.
pub async fn check(mut config: TeacherConfig) -> CheckResult {
    let name = format!("teacher {}", config.api_url);
    // A check must talk to the teacher, not to yesterday's cache.
    config.cache_dir = None;
    let unreachable_fix = format!(
        "start the teacher (e.g. `vllm serve {} --reasoning-parser qwen3`) at that URL, or \
         correct [teacher] api_url / --teacher-url (and TGRPO_TEACHER_API_KEY if it wants one)",
        config.model_name
    );
    let teacher = match HttpTeacher::new(&config, TeacherArgs::api_key()) {
        Ok(teacher) => teacher,
        Err(err) => {
            return CheckResult::fail(name, format!("bad teacher config: {err}"), unreachable_fix);
        }
    };
    println!(
        "teacher: {} (model {})",
        teacher.describe(),
        config.model_name
    );
    let mut warnings = Vec::new();
    match teacher.list_models().await {
        Ok(models) if models.contains(&config.model_name) => {
            println!("models: ok, serves {}", models.join(", "));
        }
        Ok(models) => {
            println!(
                "models: WARNING, {} is not among the served models: {}",
                config.model_name,
                models.join(", ")
            );
            warnings.push(format!("{} not among the served models", config.model_name));
        }
        Err(err) => println!("models: could not list ({err}); trying a completion anyway"),
    }

    let source = match TraceSource::new(&config, teacher.clone(), Unverified) {
        Ok(source) => source,
        Err(err) => {
            return CheckResult::fail(name, format!("bad teacher config: {err}"), unreachable_fix);
        }
    };
    let started = Instant::now();
    let outcome = match source.trace(&probe_problem(), 0).await {
        Ok(outcome) => outcome,
        Err(err) => {
            return CheckResult::fail(name, format!("no answer: {err}"), unreachable_fix);
        }
    };
    let latency = started.elapsed();
    let record = outcome.record;
    let where_from = match &record.thinking {
        None => "nowhere",
        Some(_) if record.raw_text.contains("</think>") => "inline <think> tags in `content`",
        Some(_) => "a separate reasoning field (the server runs a reasoning parser)",
    };
    let usage = record.usage;
    println!(
        "completion: {:.2}s, {} attempt(s), finish_reason {}, {} prompt + {} completion tokens",
        latency.as_secs_f64(),
        outcome.attempts,
        record.finish_reason.as_deref().unwrap_or("?"),
        usage.prompt_tokens,
        usage.completion_tokens
    );
    println!("thinking: found in {where_from}");
    if let Some(thinking) = &record.thinking {
        println!("  {}", preview(thinking));
    }
    match &record.code {
        Some(code) => println!("code: found\n  {}", preview(code)),
        None => println!("code: NONE in the answer: {}", preview(&record.answer)),
    }
    if config.enable_thinking && record.thinking.is_none() {
        return CheckResult::fail(
            name,
            "thinking is on but the answer has no reasoning",
            "serve a thinking model, pass chat_template_kwargs through (vLLM does), or set \
             [teacher] enable_thinking = false / --no-thinking",
        );
    }
    if record.code.is_none() {
        return CheckResult::fail(
            name,
            "the answer has no python code block",
            format!(
                "raise [teacher] max_tokens (finish_reason was {}) or check that {} is a code model",
                record.finish_reason.as_deref().unwrap_or("?"),
                config.model_name
            ),
        );
    }
    let mut detail = format!(
        "{} answered in {:.2} s ({} completion tokens), reasoning in {where_from}, code found",
        config.model_name,
        latency.as_secs_f64(),
        usage.completion_tokens
    );
    if !warnings.is_empty() {
        detail.push_str(&format!(" (WARNING: {})", warnings.join("; ")));
    }
    CheckResult::pass(name, detail)
}

fn preview(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}
