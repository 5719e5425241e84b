//! `tgrpo check teacher`: is the teacher reachable, does it serve the configured model,
//! and does it think? Sends one small problem and reports what came back (the reasoning
//! and where it arrived, the code, tokens, latency). Exits non-zero when the teacher
//! cannot be reached or its answer has no reasoning (with thinking on) or no code.

use std::time::Instant;

use clap::Args;
use tgrpo_dataset::{Problem, TestFormat};
use tgrpo_teacher::{HttpTeacher, Teacher, TraceSource, Unverified};

use super::teacher_args::TeacherArgs;

/// Arguments of `tgrpo check teacher`.
#[derive(Debug, Args)]
pub struct CheckTeacherArgs {
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

/// Runs the check and prints its report.
pub async fn run(args: CheckTeacherArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.teacher.local_model.is_none(),
        "`tgrpo check teacher` checks the HTTP teacher; --teacher-local-model has nothing to connect to"
    );
    let mut config = args.teacher.to_config()?;
    // A check must talk to the teacher, not to yesterday's cache.
    config.cache_dir = None;
    let teacher = HttpTeacher::new(&config, TeacherArgs::api_key())?;
    println!(
        "teacher: {} (model {})",
        teacher.describe(),
        config.model_name
    );
    match teacher.list_models().await {
        Ok(models) if models.contains(&config.model_name) => {
            println!("models: ok, serves {}", models.join(", "));
        }
        Ok(models) => println!(
            "models: WARNING, {} is not among the served models: {}",
            config.model_name,
            models.join(", ")
        ),
        Err(err) => println!("models: could not list ({err}); trying a completion anyway"),
    }

    let source = TraceSource::new(&config, teacher.clone(), Unverified)?;
    let started = Instant::now();
    let outcome = source.trace(&probe_problem(), 0).await?;
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
    let mut problems = Vec::new();
    if config.enable_thinking && record.thinking.is_none() {
        problems.push(
            "thinking is on but the answer has no reasoning: is the model a thinking model, \
             and does the server pass chat_template_kwargs?",
        );
    }
    if record.code.is_none() {
        problems.push("the answer has no python code block");
    }
    if problems.is_empty() {
        println!("teacher check: OK");
        Ok(())
    } else {
        anyhow::bail!("teacher check failed: {}", problems.join("; "))
    }
}

fn preview(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}
