//! Chat-template tests: Qwen2.5's and SmolLM2's published templates render the exact
//! ChatML prompts those models were tuned on; the Jinja environment behaves like
//! transformers' (block trimming, Python methods, `tojson`, `raise_exception`, loop
//! controls); templates load from HF files and GGUF metadata, with a ChatML fallback.
//! With the real GGUF files present (../shared/tools/real-models.sh), their embedded
//! templates are checked too; otherwise those tests skip with a message.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file;
use tgrpo_policy::chat::{CHATML_TEMPLATE, ChatError, ChatTemplate, Message};
use tgrpo_policy::tokenizer::{ByteLevelBpe, PreTokenizerKind, Tokenizer};

/// Qwen2.5 Instruct's `chat_template` (tokenizer_config.json of the Qwen2.5 and
/// Qwen2.5-Coder Instruct releases, Apache-2.0), verbatim.
const QWEN25_TEMPLATE: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// SmolLM2 Instruct's `chat_template` (Apache-2.0), verbatim.
const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const QWEN_DEFAULT_SYSTEM: &str = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n";

fn template(source: &str) -> Result<ChatTemplate> {
    Ok(ChatTemplate::new(source, "test", BTreeMap::new())?)
}

#[test]
fn qwen25_template_renders_chatml_with_its_default_system_prompt() -> Result<()> {
    let qwen = template(QWEN25_TEMPLATE)?;
    let user = Message::user("Write a function that adds two numbers.\nassert add(1, 2) == 3");

    let prompt = qwen.render(std::slice::from_ref(&user), true)?;
    assert_eq!(
        prompt,
        format!(
            "{QWEN_DEFAULT_SYSTEM}<|im_start|>user\nWrite a function that adds two numbers.\nassert add(1, 2) == 3<|im_end|>\n<|im_start|>assistant\n"
        )
    );

    let with_system = [
        Message::system("You are a careful Python programmer."),
        user.clone(),
    ];
    assert_eq!(
        qwen.render(&with_system, true)?,
        "<|im_start|>system\nYou are a careful Python programmer.<|im_end|>\n<|im_start|>user\nWrite a function that adds two numbers.\nassert add(1, 2) == 3<|im_end|>\n<|im_start|>assistant\n"
    );

    let conversation = [
        user,
        Message::assistant("```python\ndef add(a, b):\n    return a + b\n```"),
        Message::user("Thanks"),
    ];
    assert_eq!(
        qwen.render(&conversation, false)?,
        format!(
            "{QWEN_DEFAULT_SYSTEM}<|im_start|>user\nWrite a function that adds two numbers.\nassert add(1, 2) == 3<|im_end|>\n<|im_start|>assistant\n```python\ndef add(a, b):\n    return a + b\n```<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n"
        ),
        "no generation prompt, no trailing newline from the template's last line"
    );
    Ok(())
}

#[test]
fn smollm2_template_renders_chatml_with_its_default_system_prompt() -> Result<()> {
    let smol = template(SMOLLM2_TEMPLATE)?;
    assert_eq!(
        smol.render(&[Message::user("What is the capital of France?")], true)?,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        smol.render(&[Message::system("Be brief."), Message::user("Hi")], false)?,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
    Ok(())
}

#[test]
fn jinja_environment_behaves_like_transformers() -> Result<()> {
    let messages = [
        Message::user("  hi there  "),
        Message::assistant("ok"),
        Message::user("again"),
    ];

    // trim_blocks + lstrip_blocks: block tags on their own lines leave no whitespace.
    let blocks = template(
        "{% for message in messages %}\n  {% if message.role == 'user' %}\nU: {{ message.content }}\n  {% endif %}\n{% endfor %}\n",
    )?;
    assert_eq!(
        blocks.render(&messages, false)?,
        "U:   hi there  \nU: again\n"
    );

    // Python string methods (and booleans print as Python does).
    let methods = template(
        "{{ messages[0].content.strip() }}|{{ messages[0].content.startswith('  hi') }}|{{ messages[1].role.upper() }}",
    )?;
    assert_eq!(methods.render(&messages, false)?, "hi there|True|ASSISTANT");

    // raise_exception aborts rendering with the template's message.
    let strict = template(
        "{% if messages[0].role != 'system' %}{{ raise_exception('Conversation must start with a system message') }}{% endif %}",
    )?;
    let error = strict.render(&messages, false).expect_err("must raise");
    assert!(matches!(error, ChatError::Render { .. }));
    assert!(
        error
            .to_string()
            .contains("Conversation must start with a system message"),
        "{error}"
    );

    // tojson as Python's json.dumps: ", " / ": " separators, no HTML escaping, and a
    // message's keys in the order a Python dict {role, content} has them.
    let json = template(
        "{{ {'a': [1, 2], 'b': '<tool> & é'} | tojson }}|{{ messages[1] | tojson(indent=2) }}",
    )?;
    assert_eq!(
        json.render(&messages, false)?,
        "{\"a\": [1, 2], \"b\": \"<tool> & é\"}|{\n  \"role\": \"assistant\",\n  \"content\": \"ok\"\n}"
    );

    // Loop controls, and `tools`/`documents` defined as none.
    let loops = template(
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.role[0] }}{% endfor %}|{{ tools is none }}|{{ documents is none }}|{{ bos_token is defined }}",
    )?;
    assert_eq!(loops.render(&messages, false)?, "ua|True|True|False");
    Ok(())
}

#[test]
fn broken_templates_name_their_origin() {
    let error = ChatTemplate::new(
        "{% if %}",
        "tokenizer_config.json of model X",
        BTreeMap::new(),
    )
    .expect_err("syntax error");
    assert!(matches!(error, ChatError::Syntax { .. }));
    assert!(error.to_string().contains("model X"), "{error}");
}

fn qwen_like_tokenizer() -> Result<Tokenizer> {
    let corpus = [
        "Hello world, write a function.",
        "def add(a, b):\n    return a + b\n",
        "system user assistant",
    ];
    Ok(ByteLevelBpe::train(
        &corpus,
        320,
        &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        PreTokenizerKind::Qwen2,
    )?
    .build()?)
}

#[test]
fn templates_load_from_hf_files_with_chatml_as_the_fallback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokenizer = qwen_like_tokenizer()?;
    let messages = [Message::user("hi")];

    // No template anywhere: ChatML, flagged as the fallback.
    tokenizer.save_hf_dir(dir.path(), None)?;
    let fallback = ChatTemplate::from_hf_dir(dir.path())?;
    assert!(fallback.is_fallback());
    assert_eq!(
        fallback.render(&messages, true)?,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(ChatTemplate::chatml().source(), CHATML_TEMPLATE);

    // chat_template.jinja beside the config.
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "jinja:{{ messages[0].content }}{{ eos_token }}",
    )?;
    let from_jinja = ChatTemplate::from_hf_dir(dir.path())?;
    assert!(!from_jinja.is_fallback());
    assert_eq!(from_jinja.render(&messages, true)?, "jinja:hi<|endoftext|>");

    // chat_template in tokenizer_config.json wins; special tokens may be AddedToken objects;
    // a list of named templates picks `default`.
    let config = serde_json::json!({
        "bos_token": {"content": "<|im_start|>", "special": true},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"},
        ],
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string())?;
    let from_config = ChatTemplate::from_hf_dir(dir.path())?;
    assert_eq!(
        from_config.render(&messages, true)?,
        "<|im_start|>hi<|im_end|>"
    );
    assert!(from_config.origin().ends_with("tokenizer_config.json"));

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": 3}"#,
    )?;
    let error = ChatTemplate::from_hf_dir(dir.path())
        .expect_err("bad chat_template")
        .to_string();
    assert!(
        error.contains("tokenizer_config.json") && error.contains("chat_template"),
        "{error}"
    );

    // Rendering then encoding keeps the ChatML markers as single special ids.
    let qwen = template(QWEN25_TEMPLATE)?;
    let ids = qwen.encode(&tokenizer, &messages, true)?;
    let im_start = tokenizer.token_to_id("<|im_start|>").context("im_start")?;
    let im_end = tokenizer.token_to_id("<|im_end|>").context("im_end")?;
    assert_eq!(ids[0], im_start);
    assert_eq!(
        ids.iter().filter(|&&id| id == im_start).count(),
        3,
        "system, user, assistant turns"
    );
    assert_eq!(ids.iter().filter(|&&id| id == im_end).count(), 2);
    assert_eq!(
        tokenizer.decode(&ids, false)?,
        qwen.render(&messages, true)?
    );
    Ok(())
}

#[test]
fn templates_load_from_gguf_metadata() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = ByteLevelBpe::train(
        &["hello"],
        300,
        &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        PreTokenizerKind::Qwen2,
    )?;
    spec.bos_token_id = Some(1);
    spec.eos_token_id = Some(2);
    let mut metadata = spec.gguf_metadata();
    // Writers differ in integer types: read an i32 id as well as a u32 one.
    metadata.retain(|(key, _)| key != "tokenizer.ggml.eos_token_id");
    metadata.push((
        "tokenizer.ggml.eos_token_id".into(),
        gguf_file::Value::I32(2),
    ));
    metadata.push((
        "tokenizer.chat_template".into(),
        gguf_file::Value::String(SMOLLM2_TEMPLATE.into()),
    ));
    let path = dir.path().join("model.gguf");
    let write = |metadata: &[(String, gguf_file::Value)]| -> Result<gguf_file::Content> {
        let entries: Vec<(&str, &gguf_file::Value)> = metadata
            .iter()
            .map(|(key, value)| (key.as_str(), value))
            .collect();
        gguf_file::write(&mut std::fs::File::create(&path)?, &entries, &[])?;
        Ok(gguf_file::Content::read(&mut std::fs::File::open(&path)?)?)
    };

    let smol = ChatTemplate::from_gguf(&write(&metadata)?)?;
    assert!(!smol.is_fallback());
    assert_eq!(
        smol.special_tokens().get("bos_token").map(String::as_str),
        Some("<|im_start|>")
    );
    assert_eq!(
        smol.special_tokens().get("eos_token").map(String::as_str),
        Some("<|im_end|>")
    );
    assert_eq!(
        smol.render(&[Message::system("s"), Message::user("u")], true)?,
        "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"
    );

    metadata.pop();
    let fallback = ChatTemplate::from_gguf(&write(&metadata)?)?;
    assert!(fallback.is_fallback());
    Ok(())
}

/// Where ../shared/tools/real-models.sh puts the real GGUF files (`TGRPO_MODELS_DIR`
/// overrides); `None` (after saying so) when the file is absent.
fn real_model(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TGRPO_MODELS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/tgrpo-models"))
        })?;
    let path = dir.join(file);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipping: {} not found (run ../shared/tools/real-models.sh to fetch it)",
            path.display()
        );
        None
    }
}

fn read_gguf(path: &PathBuf) -> Result<gguf_file::Content> {
    Ok(gguf_file::Content::read(&mut std::fs::File::open(path)?)?)
}

#[test]
fn real_qwen_gguf_template_is_qwen25s_and_renders_the_prompt() -> Result<()> {
    let Some(path) = real_model("qwen2.5-coder-0.5b-instruct-q4km.gguf") else {
        return Ok(());
    };
    let content = read_gguf(&path)?;
    let qwen = ChatTemplate::from_gguf(&content)?;
    assert_eq!(
        qwen.source(),
        QWEN25_TEMPLATE,
        "the fixture is the published template"
    );
    let prompt = qwen.render(
        &[Message::user("Write a python function to add two numbers.")],
        true,
    )?;
    assert_eq!(
        prompt,
        format!(
            "{QWEN_DEFAULT_SYSTEM}<|im_start|>user\nWrite a python function to add two numbers.<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let ids = qwen.encode(&tokenizer, &[Message::user("Hello world")], true)?;
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .with_context(|| format!("{token} in the qwen vocab"))
    };
    let newline = id("Ċ")?;
    let expected_tail = [
        id("<|im_start|>")?,
        id("user")?,
        newline,
        id("Hello")?,
        id("Ġworld")?,
        id("<|im_end|>")?,
        newline,
        id("<|im_start|>")?,
        id("assistant")?,
        newline,
    ];
    assert_eq!(ids[0], 151644, "<|im_start|>");
    assert!(ids.ends_with(&expected_tail), "{ids:?}");
    Ok(())
}

#[test]
fn real_smollm_gguf_template_is_smollm2s() -> Result<()> {
    let Some(path) = real_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return Ok(());
    };
    let smol = ChatTemplate::from_gguf(&read_gguf(&path)?)?;
    assert_eq!(smol.source(), SMOLLM2_TEMPLATE);
    assert_eq!(
        smol.render(&[Message::user("What is 2+2?")], true)?,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    Ok(())
}
