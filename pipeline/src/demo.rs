//! The CPU demo's built-in world: 16 tiny MBPP-style problems and a tiny model built for
//! them at start, so that `tgrpo local` runs the whole pipeline in minutes on a laptop
//! with nothing downloaded.
//!
//! **The model** is a Qwen2-family decoder (2 layers, hidden 128, 4 query / 2 KV heads of
//! dim 32) with *random* weights from a fixed seed, and a byte-level BPE tokenizer trained
//! at start on the problems' prompts and reference solutions (about 600 tokens, so a
//! prompt is ~70 tokens and an answer ~16). It knows nothing: before training its answers
//! are noise and pass no test. Everything is deterministic: the same seed builds the same
//! bytes.
//!
//! **The problems** are one-line functions (add, subtract, square, reverse a string, …),
//! each with a reference solution and asserts, in MBPP's row format. The demo trains and
//! evaluates on the same 16 problems: it shows that the loop learns, not that the tiny
//! model generalises.

use std::path::{Path, PathBuf};

use tgrpo_dataset::{Problem, TestFormat, prompt};
use tgrpo_policy::tokenizer::{ByteLevelBpe, PreTokenizerKind};
use tgrpo_policy::{Family, PolicyError, tiny};

use tgrpo_learner::LrSchedule;

use crate::config::{DEMO_MODEL_SOURCE, DataSource, TeacherKind, TgrpoConfig};
use crate::error::{PipelineError, Result};

/// `(name, statement, reference, tests)` of each built-in problem. The first half are the
/// ones the demo's teacher is asked about (`synthesis.limit = 8` in the demo config); the
/// second half only the policy's own samples (GRPO and self-SFT) can teach.
const PROBLEMS: &[(&str, &str, &str, &[&str])] = &[
    (
        "add",
        "Write a function to add two numbers.",
        "def add(a, b):\n    return a + b\n",
        &["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
    ),
    (
        "multiply",
        "Write a function to multiply two numbers.",
        "def multiply(a, b):\n    return a * b\n",
        &["assert multiply(3, 4) == 12", "assert multiply(0, 5) == 0"],
    ),
    (
        "square",
        "Write a function to square a number.",
        "def square(x):\n    return x * x\n",
        &["assert square(3) == 9", "assert square(-2) == 4"],
    ),
    (
        "is_even",
        "Write a function to check whether a number is even.",
        "def is_even(n):\n    return n % 2 == 0\n",
        &["assert is_even(4) == True", "assert is_even(3) == False"],
    ),
    (
        "reverse_string",
        "Write a function to reverse a string.",
        "def reverse_string(s):\n    return s[::-1]\n",
        &["assert reverse_string('abc') == 'cba'"],
    ),
    (
        "first_item",
        "Write a function to get the first item of a list.",
        "def first_item(xs):\n    return xs[0]\n",
        &["assert first_item([7, 8]) == 7"],
    ),
    (
        "list_sum",
        "Write a function to sum the numbers in a list.",
        "def list_sum(xs):\n    return sum(xs)\n",
        &["assert list_sum([1, 2, 3]) == 6"],
    ),
    (
        "to_upper",
        "Write a function to convert a string to upper case.",
        "def to_upper(s):\n    return s.upper()\n",
        &["assert to_upper('ab') == 'AB'"],
    ),
    (
        "add",
        "Write a function that returns the total price of two items.",
        "def add(a, b):\n    return a + b\n",
        &["assert add(10, 5) == 15", "assert add(0, 7) == 7"],
    ),
    (
        "multiply",
        "Write a function to find the area of a rectangle from its width and height.",
        "def multiply(a, b):\n    return a * b\n",
        &["assert multiply(2, 6) == 12", "assert multiply(5, 5) == 25"],
    ),
    (
        "square",
        "Write a function to compute the second power of a value.",
        "def square(x):\n    return x * x\n",
        &["assert square(5) == 25", "assert square(0) == 0"],
    ),
    (
        "is_even",
        "Write a function to test if an integer is divisible by two.",
        "def is_even(n):\n    return n % 2 == 0\n",
        &["assert is_even(10) == True", "assert is_even(7) == False"],
    ),
    (
        "reverse_string",
        "Write a function to spell a word backwards.",
        "def reverse_string(s):\n    return s[::-1]\n",
        &["assert reverse_string('hello') == 'olleh'"],
    ),
    (
        "first_item",
        "Write a function to return the head of a sequence.",
        "def first_item(xs):\n    return xs[0]\n",
        &["assert first_item(['a', 'b', 'c']) == 'a'"],
    ),
    (
        "list_sum",
        "Write a function to compute the total of all values in a list.",
        "def list_sum(xs):\n    return sum(xs)\n",
        &["assert list_sum([4, 5]) == 9", "assert list_sum([]) == 0"],
    ),
    (
        "to_upper",
        "Write a function to capitalize every letter of a text.",
        "def to_upper(s):\n    return s.upper()\n",
        &["assert to_upper('hi there') == 'HI THERE'"],
    ),
];

/// How many of the built-in problems (the first ones) the demo's teacher is asked about.
pub const TAUGHT_PROBLEMS: usize = 8;

/// Seed of the demo model's weights.
pub const MODEL_SEED: u64 = 1;

/// Target vocabulary size of the demo tokenizer.
pub const VOCAB_SIZE: usize = 600;

/// A one-line description of the demo model, for output that must say what it is.
pub const MODEL_DESCRIPTION: &str = "a tiny Qwen2-style decoder (2 layers, hidden 128) with RANDOM weights (seed 1) and a ~600-token BPE tokenizer trained at start on the 16 built-in problems; it knows no Python before training";

/// The demo's run config (what `tgrpo local` runs and `configs/demo.toml` spells out):
/// everything under `outputs/demo/`, the built-in problems and model, the reference
/// teacher asked about the first [`TAUGHT_PROBLEMS`] problems, CPU.
pub fn config() -> TgrpoConfig {
    let mut config = TgrpoConfig {
        run_id: "demo".to_string(),
        output_dir: PathBuf::from("outputs/demo"),
        ..TgrpoConfig::default()
    };
    config.model.source = DEMO_MODEL_SOURCE.to_string();
    config.model.device = "cpu".to_string();
    config.model.dtype = "f32".to_string();
    config.lora.r = 32;
    config.lora.alpha = 64.0;
    config.lora.dropout = 0.0;
    config.data.source = DataSource::Demo;
    config.data.output_dir = PathBuf::from("outputs/demo/data");
    config.teacher.num_samples_per_problem = 1;
    config.teacher.cache_dir = Some(PathBuf::from("outputs/demo/data/teacher_cache"));
    config.teacher.traces_path = PathBuf::from("outputs/demo/data/synthetic_traces.jsonl");
    config.synthesis.teacher = TeacherKind::Reference;
    config.synthesis.limit = TAUGHT_PROBLEMS;
    config.grpo.num_generations = 8;
    config.grpo.max_new_tokens = 40;
    config.grpo.kl_coef = 0.0;
    config.dual_source.use_teacher_thinking = false;
    config.training.learning_rate = 3e-3;
    config.training.warmup_steps = 0;
    config.training.lr_schedule = LrSchedule::Constant;
    config.training.gradient_accumulation_steps = 1;
    config.training.prompts_per_step = 4;
    config.training.teacher_traces_per_step = 4;
    config.training.epochs = 20;
    config.training.save_every_steps = 20;
    config.training.keep_last_checkpoints = 2;
    config.rollout.max_batch_sequences = 32;
    // One lease is one training batch, and the learner buffers one batch ahead: the
    // worker (faster than the learner here) waits instead of sampling groups that would
    // be two versions old by the time the learner reached them. Sampling overlaps
    // training (asynchronous GRPO), so groups are one or two versions behind.
    config.learner.max_prompts_per_lease = config.training.prompts_per_step;
    config.learner.max_buffered_groups = config.training.prompts_per_step;
    config.grpo.max_staleness = 2;
    config.evaluation.num_samples = 8;
    config.evaluation.k = vec![1, 4, 8];
    config.evaluation.temperature = 1.0;
    config.evaluation.top_p = 1.0;
    config.evaluation.max_new_tokens = 40;
    config.sync_derived_and_paths();
    config
}

/// The built-in problems, in MBPP shape; task ids are `1`..`16`.
pub fn problems() -> Vec<Problem> {
    PROBLEMS
        .iter()
        .enumerate()
        .map(|(index, (name, text, code, tests))| Problem {
            task_id: (index + 1).to_string(),
            text: (*text).to_string(),
            reference: Some((*code).to_string()),
            tests: tests.iter().map(|test| (*test).to_string()).collect(),
            setup_code: String::new(),
            format: TestFormat::Mbpp,
            entry_point: Some((*name).to_string()),
            prompt: None,
        })
        .collect()
}

/// Builds the demo model into `dir` (created if needed): `config.json`,
/// `model.safetensors`, `tokenizer.json` and `tokenizer_config.json` with the tiny chat
/// template. The tokenizer is trained on `problems`' prompts and references.
pub fn build_model(dir: &Path, problems: &[Problem]) -> Result<()> {
    let mut corpus: Vec<String> = problems.iter().map(prompt::user_message).collect();
    corpus.extend(problems.iter().filter_map(|problem| {
        problem
            .reference
            .as_ref()
            .map(|code| format!("```python\n{code}```"))
    }));
    corpus.push("You are a helpful assistant.".to_string());
    let corpus: Vec<&str> = corpus.iter().map(String::as_str).collect();
    let tokenizer = ByteLevelBpe::train(
        &corpus,
        VOCAB_SIZE,
        &tiny::SPECIAL_TOKENS,
        PreTokenizerKind::Qwen2,
    )
    .and_then(|bpe| bpe.build())
    .map_err(PolicyError::from)?;
    let mut config = tiny::config(Family::Qwen2);
    config.vocab_size = tokenizer.vocab_size();
    config.hidden_size = 128;
    config.intermediate_size = 256;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.head_dim = 32;
    let token = |name: &str| {
        tokenizer.token_to_id(name).ok_or_else(|| {
            PipelineError::stage("demo model", format!("the tokenizer lacks {name}"))
        })
    };
    let im_end = token("<|im_end|>")?;
    let end_of_text = token("<|endoftext|>")?;
    config.eos_token_id = vec![im_end, end_of_text];
    config.bos_token_id = Some(end_of_text);
    std::fs::create_dir_all(dir).map_err(|err| PipelineError::io(dir, err))?;
    let config_path = dir.join("config.json");
    let json =
        serde_json::to_string_pretty(&tiny::hf_config_json(&config)).expect("a config serializes");
    std::fs::write(&config_path, json).map_err(|err| PipelineError::io(&config_path, err))?;
    let weights = tiny::random_weights(&config, MODEL_SEED)?;
    let weights_path = dir.join("model.safetensors");
    candle_core::safetensors::save(&weights, &weights_path).map_err(|source| {
        PipelineError::stage(
            "demo model",
            format!("writing {}: {source}", weights_path.display()),
        )
    })?;
    tokenizer
        .save_hf_dir(dir, Some(tiny::CHAT_TEMPLATE))
        .map_err(PolicyError::from)?;
    Ok(())
}
