//! Tokenizer tests on small byte-level BPE vocabularies trained here: round trips, the GGUF
//! builder against hand-written `tokenizer.json` equivalents (Qwen2, SmolLM and Llama 3
//! layouts), the per-family split regexes, EOS/pad discovery, the streaming decoder and stop
//! strings.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file;
use tgrpo_policy::tokenizer::{
    ByteLevelBpe, PreTokenizerKind, StopMatch, StreamDecoder, TokenType, Tokenizer, TokenizerError,
};
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

const SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Training text: English, code, numbers, contractions and some non-ASCII, so the merges
/// cover common words while rarer multi-byte characters stay split over several tokens.
const CORPUS: &[&str] = &[
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "I'm sure you're right, they've said it'll work and we'd agree.",
    "def add(a, b):\n    return a + b\n\nprint(add(12, 345))\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    "assert remove_odd([1,2,3]) == [2]\nassert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n",
    "Numbers: 12345 67890 2024 1000000 3.14159",
    "naïve café résumé — déjà vu",
    "Hello world, hello again, world of code.",
    "class Solution:\n    def solve(self, nums: list[int]) -> int:\n        return sum(nums)\n",
];

/// Strings that exercise the split regexes, normalization, whitespace runs, multi-byte
/// characters outside the training text, and special tokens inside text.
const PROBES: &[&str] = &[
    "Hello world",
    "I'M here, you're there. She'S HE'LL 'd",
    "x = 12345 + 6789 * 3.14159",
    "def f(a, b):\n    return a+b\n\n\n",
    "   leading spaces and trailing   ",
    "tabs\tand\r\nCRLF\r\n\r\nend",
    "naïve café résumé",
    "decomposed e\u{301} vs é",
    "中文字符 and 日本語のテキスト",
    "emoji 😀👍🏽 mix",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<tool_call>{\"a\": 1}</tool_call>",
    "",
    "\n",
    "a\n\n\n   b",
    "  \n  \n",
];

fn trained(pre: PreTokenizerKind) -> Result<ByteLevelBpe> {
    Ok(ByteLevelBpe::train(CORPUS, 420, SPECIALS, pre)?)
}

fn write_gguf(path: &Path, metadata: &[(String, gguf_file::Value)]) -> Result<()> {
    let mut file = std::fs::File::create(path)?;
    let entries: Vec<(&str, &gguf_file::Value)> = metadata
        .iter()
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    gguf_file::write(&mut file, &entries, &[])?;
    Ok(())
}

fn read_gguf(path: &Path) -> Result<gguf_file::Content> {
    let mut file = std::fs::File::open(path)?;
    Ok(gguf_file::Content::read(&mut file)?)
}

/// A `tokenizer.json` in the layout the model family's Hugging Face tokenizer uses, written
/// independently of [`ByteLevelBpe::build`] (regexes spelled out as in the published files).
fn hf_tokenizer_json(spec: &ByteLevelBpe, family: PreTokenizerKind) -> serde_json::Value {
    use serde_json::json;
    let vocab: BTreeMap<&str, usize> = spec
        .tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.as_str(), id))
        .collect();
    let merges: Vec<[&str; 2]> = spec
        .merges
        .iter()
        .map(|(left, right)| [left.as_str(), right.as_str()])
        .collect();
    let added_tokens: Vec<serde_json::Value> = spec
        .tokens
        .iter()
        .zip(&spec.token_types)
        .enumerate()
        .filter(|(_, (_, kind))| matches!(kind, TokenType::Control | TokenType::UserDefined))
        .map(|(id, (token, kind))| {
            json!({"id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": *kind == TokenType::Control})
        })
        .collect();
    let byte_level = |trim_offsets: bool, use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trim_offsets, "use_regex": use_regex});
    let (normalizer, pre_tokenizer, post_processor, ignore_merges) = match family {
        PreTokenizerKind::Qwen2 => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                 "behavior": "Isolated", "invert": false},
                byte_level(false, false)]}),
            byte_level(false, false),
            false,
        ),
        PreTokenizerKind::Llama3 => {
            let bos = &spec.tokens[spec.bos_token_id.expect("llama3 test spec has a bos") as usize];
            (
                serde_json::Value::Null,
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                     "behavior": "Isolated", "invert": false},
                    byte_level(true, false)]}),
                json!({"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                       "special_tokens": {bos.as_str(): {"id": bos, "ids": [spec.bos_token_id], "tokens": [bos]}}}),
                true,
            )
        }
        PreTokenizerKind::SmolLm => (
            serde_json::Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true, true)]}),
            byte_level(false, true),
            false,
        ),
        PreTokenizerKind::Gpt2 => (
            serde_json::Value::Null,
            byte_level(true, true),
            byte_level(false, true),
            false,
        ),
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level(true, true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    })
}

/// A trained spec extended the way real GGUFs look: a user-defined `<tool_call>` pair and
/// unused padding entries at the end of the vocabulary.
fn gguf_like(pre: PreTokenizerKind) -> Result<ByteLevelBpe> {
    let mut spec = trained(pre)?;
    for token in ["<tool_call>", "</tool_call>"] {
        spec.tokens.push(token.to_string());
        spec.token_types.push(TokenType::UserDefined);
    }
    if pre == PreTokenizerKind::Llama3 {
        spec.tokens.push("<|begin_of_text|>".to_string());
        spec.token_types.push(TokenType::Control);
        spec.bos_token_id = Some(spec.tokens.len() as u32 - 1);
        spec.add_bos_token = true;
    }
    Ok(spec)
}

#[test]
fn gguf_tokenizer_encodes_like_the_equivalent_tokenizer_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for family in [
        PreTokenizerKind::Qwen2,
        PreTokenizerKind::SmolLm,
        PreTokenizerKind::Llama3,
        PreTokenizerKind::Gpt2,
    ] {
        let spec = gguf_like(family)?;
        let json_path = dir.path().join(format!("{family:?}.json"));
        std::fs::write(
            &json_path,
            serde_json::to_string(&hf_tokenizer_json(&spec, family))?,
        )?;
        let reference = Tokenizer::from_file(&json_path)?;

        let mut gguf_spec = spec.clone();
        for index in 0..3 {
            gguf_spec
                .tokens
                .push(format!("[PAD{}]", gguf_spec.tokens.len() + index));
            gguf_spec.token_types.push(TokenType::Unused);
        }
        let gguf_path = dir.path().join(format!("{family:?}.gguf"));
        write_gguf(&gguf_path, &gguf_spec.gguf_metadata())?;
        let from_gguf = Tokenizer::from_gguf(&read_gguf(&gguf_path)?)?;
        assert_eq!(
            ByteLevelBpe::from_gguf(&read_gguf(&gguf_path)?)?,
            gguf_spec,
            "{family:?}: metadata round trip"
        );

        for probe in PROBES {
            for add_special in [false, true] {
                let expected = reference.encode(probe, add_special)?;
                let actual = from_gguf.encode(probe, add_special)?;
                assert_eq!(
                    actual, expected,
                    "{family:?}: encoding {probe:?} (add_special {add_special})"
                );
                for skip_special in [false, true] {
                    assert_eq!(
                        from_gguf.decode(&actual, skip_special)?,
                        reference.decode(&expected, skip_special)?,
                        "{family:?}: decoding {probe:?}"
                    );
                }
            }
        }
        if family == PreTokenizerKind::Llama3 {
            let bos = spec.bos_token_id.unwrap();
            assert_eq!(
                from_gguf.encode("hi", true)?.first(),
                Some(&bos),
                "llama3 adds bos with add_special"
            );
            assert_ne!(from_gguf.encode("hi", false)?.first(), Some(&bos));
        }
    }
    Ok(())
}

#[test]
fn round_trip_keeps_multibyte_text_and_special_tokens() -> Result<()> {
    let tokenizer = gguf_like(PreTokenizerKind::Qwen2)?.build()?;
    for probe in PROBES {
        let ids = tokenizer.encode(probe, false)?;
        // Qwen2 normalizes to NFC, so decomposed input comes back composed.
        let expected: String = if probe.contains('\u{301}') {
            probe.replace("e\u{301}", "é")
        } else {
            probe.to_string()
        };
        assert_eq!(
            tokenizer.decode(&ids, false)?,
            expected,
            "round trip of {probe:?}"
        );
    }

    let im_start = tokenizer
        .token_to_id("<|im_start|>")
        .context("im_start in vocab")?;
    let im_end = tokenizer
        .token_to_id("<|im_end|>")
        .context("im_end in vocab")?;
    let ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", false)?;
    assert_eq!(ids.first(), Some(&im_start), "<|im_start|> is one token");
    assert_eq!(ids.last(), Some(&im_end), "<|im_end|> is one token");
    assert_eq!(
        tokenizer.decode(&ids, true)?,
        "user\nhi",
        "skip_special drops control tokens"
    );

    // User-defined tokens are whole tokens but not special: kept when skipping specials.
    let tool_call = tokenizer
        .token_to_id("<tool_call>")
        .context("tool_call in vocab")?;
    let ids = tokenizer.encode("<tool_call>x", false)?;
    assert_eq!(ids[0], tool_call);
    assert_eq!(tokenizer.decode(&ids, true)?, "<tool_call>x");

    // A character the vocabulary has no merge for is several byte-level tokens.
    assert!(
        tokenizer.encode("😀", false)?.len() > 1,
        "the emoji must span tokens for the stream tests to mean anything"
    );
    Ok(())
}

fn splits(tokenizer: &Tokenizer, text: &str) -> Result<Vec<String>> {
    let mut pretokenized = PreTokenizedString::from(text);
    tokenizer
        .inner()
        .get_pre_tokenizer()
        .context("tokenizer has a pre-tokenizer")?
        .pre_tokenize(&mut pretokenized)
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    Ok(pretokenized
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(piece, _, _)| piece.to_string())
        .collect())
}

#[test]
fn each_family_splits_text_with_its_own_regex() -> Result<()> {
    // Merges trained with GPT-2's split contain multi-digit numbers, so the per-family
    // digit rules are visible in the ids too.
    let spec = trained(PreTokenizerKind::Gpt2)?;
    let text = "Hello world 12345 I'M here\n\n  x";
    let expected: [(PreTokenizerKind, &[&str]); 4] = [
        (
            PreTokenizerKind::Qwen2,
            &[
                "Hello", "Ġworld", "Ġ", "1", "2", "3", "4", "5", "ĠI", "'M", "Ġhere", "ĊĊ", "Ġ",
                "Ġx",
            ],
        ),
        (
            PreTokenizerKind::Llama3,
            &[
                "Hello", "Ġworld", "Ġ", "123", "45", "ĠI", "'M", "Ġhere", "ĊĊ", "Ġ", "Ġx",
            ],
        ),
        (
            PreTokenizerKind::SmolLm,
            &[
                "Hello", "Ġworld", "Ġ", "1", "2", "3", "4", "5", "ĠI", "'", "M", "Ġhere", "ĊĊĠ",
                "Ġx",
            ],
        ),
        (
            PreTokenizerKind::Gpt2,
            &[
                "Hello", "Ġworld", "Ġ12345", "ĠI", "'", "M", "Ġhere", "ĊĊĠ", "Ġx",
            ],
        ),
    ];
    for (family, pieces) in expected {
        let tokenizer = ByteLevelBpe {
            pre: family,
            ..spec.clone()
        }
        .build()?;
        assert_eq!(splits(&tokenizer, text)?, pieces, "{family:?} split");
        let digit_tokens = tokenizer.encode("12345", false)?.len();
        match family {
            PreTokenizerKind::Qwen2 | PreTokenizerKind::SmolLm => {
                assert_eq!(digit_tokens, 5, "{family:?}")
            }
            PreTokenizerKind::Llama3 => assert!(digit_tokens >= 2, "{family:?}"),
            PreTokenizerKind::Gpt2 => assert!(digit_tokens < 5, "gpt2 merges digit runs"),
        }
    }
    // Qwen2 normalizes to NFC before splitting; the others see the decomposed bytes.
    let qwen = ByteLevelBpe {
        pre: PreTokenizerKind::Qwen2,
        ..spec.clone()
    }
    .build()?;
    let smol = ByteLevelBpe {
        pre: PreTokenizerKind::SmolLm,
        ..spec.clone()
    }
    .build()?;
    assert_eq!(
        qwen.encode("caf\u{e9}", false)?,
        qwen.encode("cafe\u{301}", false)?
    );
    assert_ne!(
        smol.encode("caf\u{e9}", false)?,
        smol.encode("cafe\u{301}", false)?
    );
    Ok(())
}

#[test]
fn gguf_errors_name_the_bad_metadata() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = trained(PreTokenizerKind::Qwen2)?;
    let load =
        |metadata: Vec<(String, gguf_file::Value)>| -> Result<Result<Tokenizer, TokenizerError>> {
            let path = dir.path().join("bad.gguf");
            write_gguf(&path, &metadata)?;
            Ok(Tokenizer::from_gguf(&read_gguf(&path)?))
        };
    let with = |key: &str, value: gguf_file::Value| {
        let mut metadata = spec.gguf_metadata();
        metadata.retain(|(existing, _)| existing != key);
        metadata.push((key.to_string(), value));
        metadata
    };
    let message =
        |result: Result<Tokenizer, TokenizerError>| result.expect_err("must fail").to_string();

    let error = message(load(with(
        "tokenizer.ggml.pre",
        gguf_file::Value::String("deepseek-llm".into()),
    ))?);
    assert!(error.contains("deepseek-llm"), "{error}");
    let error = message(load(with(
        "tokenizer.ggml.model",
        gguf_file::Value::String("llama".into()),
    ))?);
    assert!(error.contains("`llama`"), "{error}");
    let mut missing_tokens = spec.gguf_metadata();
    missing_tokens.retain(|(key, _)| key != "tokenizer.ggml.tokens");
    let error = message(load(missing_tokens)?);
    assert!(
        error.contains("tokenizer.ggml.tokens") && error.contains("missing"),
        "{error}"
    );
    let bad_merge = gguf_file::Value::Array(vec![gguf_file::Value::String("nospace".into())]);
    let error = message(load(with("tokenizer.ggml.merges", bad_merge))?);
    assert!(
        error.contains("tokenizer.ggml.merges") && error.contains("element 0"),
        "{error}"
    );
    let unknown_merge = gguf_file::Value::Array(vec![gguf_file::Value::String("qqq zzz".into())]);
    assert!(matches!(
        load(with("tokenizer.ggml.merges", unknown_merge))?,
        Err(TokenizerError::Build { .. })
    ));
    let error = message(load(with(
        "tokenizer.ggml.eos_token_id",
        gguf_file::Value::U32(1_000_000),
    ))?);
    assert!(error.contains("eos token id 1000000"), "{error}");

    // No `tokenizer.ggml.pre`: GPT-2's split (llama.cpp's fallback too), still loads.
    let mut no_pre = spec.gguf_metadata();
    no_pre.retain(|(key, _)| key != "tokenizer.ggml.pre");
    assert!(load(no_pre)?.is_ok());
    Ok(())
}

#[test]
fn eos_and_pad_come_from_the_model_configs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokenizer = trained(PreTokenizerKind::Qwen2)?.build()?;
    let endoftext = tokenizer.token_to_id("<|endoftext|>").unwrap();
    let im_start = tokenizer.token_to_id("<|im_start|>").unwrap();
    let im_end = tokenizer.token_to_id("<|im_end|>").unwrap();
    // The GGUF path: the recorded EOS first, then every end-of-turn token present.
    assert_eq!(tokenizer.eos_token_ids(), &[endoftext, im_end]);

    tokenizer.save_hf_dir(dir.path(), None)?;
    let reloaded = Tokenizer::from_hf_dir(dir.path())?;
    assert_eq!(
        reloaded.encode(PROBES[4], false)?,
        tokenizer.encode(PROBES[4], false)?
    );
    assert_eq!(reloaded.pad_token_id(), endoftext);

    // HF configs: generation_config's list first, then config.json, then tokenizer_config.
    std::fs::write(
        dir.path().join("generation_config.json"),
        format!(r#"{{"eos_token_id": [{im_start}, {im_end}]}}"#),
    )?;
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"eos_token_id": 7, "bos_token_id": 5}"#,
    )?;
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "<|endoftext|>", "special": true}, "pad_token": null}"#,
    )?;
    let configured = Tokenizer::from_hf_dir(dir.path())?;
    assert_eq!(
        configured.eos_token_ids(),
        &[im_start, im_end, 7, endoftext]
    );
    assert!(configured.is_eos(7) && !configured.is_eos(8));
    assert_eq!(configured.bos_token_id(), Some(5));
    assert_eq!(
        configured.pad_token_id(),
        im_start,
        "no pad configured: the first eos"
    );

    std::fs::write(dir.path().join("config.json"), "{not json")?;
    let error = Tokenizer::from_hf_dir(dir.path())
        .expect_err("malformed config.json")
        .to_string();
    assert!(error.contains("config.json"), "{error}");
    Ok(())
}

/// Deterministic xorshift so the randomized tests need no RNG crate.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

fn stream(tokenizer: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<(Vec<String>, String)> {
    let mut decoder = tokenizer.stream_decoder(skip_special);
    let mut pieces = Vec::new();
    for &id in ids {
        pieces.push(decoder.push(tokenizer, id)?.to_string());
    }
    pieces.push(decoder.finish(tokenizer)?.to_string());
    assert_eq!(pieces.concat(), decoder.text());
    Ok((pieces, decoder.text().to_string()))
}

#[test]
fn stream_decoder_never_splits_a_character() -> Result<()> {
    let tokenizer = gguf_like(PreTokenizerKind::Qwen2)?.build()?;
    let pool = [
        "a",
        "b",
        " ",
        "é",
        "ï",
        "中",
        "語",
        "😀",
        "👍🏽",
        "\n",
        "def",
        " world",
        "<|im_end|>",
        "1",
    ];
    let mut rng = XorShift(0x9e3779b97f4a7c15);
    let mut held_back = 0;
    for _ in 0..200 {
        let text: String = (0..1 + rng.below(12))
            .map(|_| pool[rng.below(pool.len())])
            .collect();
        let ids = tokenizer.encode(&text, false)?;
        let (pieces, streamed) = stream(&tokenizer, &ids, false)?;
        assert_eq!(streamed, text, "streamed text of {ids:?}");
        assert!(
            pieces.iter().all(|piece| !piece.contains('\u{fffd}')),
            "broken character in {pieces:?}"
        );
        held_back += pieces[..ids.len()]
            .iter()
            .filter(|piece| piece.is_empty())
            .count();
        let (_, without_special) = stream(&tokenizer, &ids, true)?;
        assert_eq!(without_special, tokenizer.decode(&ids, true)?);
    }
    assert!(
        held_back > 0,
        "some ids must complete no character (multi-byte splits were exercised)"
    );

    // Arbitrary id sequences (invalid UTF-8 included) stream to exactly the full decode.
    let vocab = tokenizer.vocab_size();
    for _ in 0..200 {
        let ids: Vec<u32> = (0..rng.below(10))
            .map(|_| rng.below(vocab) as u32)
            .collect();
        let (pieces, streamed) = stream(&tokenizer, &ids, false)?;
        assert_eq!(streamed, tokenizer.decode(&ids, false)?, "ids {ids:?}");
        let last = pieces.len() - 1;
        for piece in &pieces[..last] {
            // Before the flush, a replacement character only appears followed by real text.
            assert!(
                !piece.ends_with('\u{fffd}'),
                "piece {piece:?} of {ids:?} ends in a broken character"
            );
        }
    }
    Ok(())
}

#[test]
fn stop_strings_are_found_across_pieces() -> Result<()> {
    let tokenizer = trained(PreTokenizerKind::Qwen2)?.build()?;
    let text = "print(1)\n```\nmore text";
    let ids = tokenizer.encode(text, false)?;
    let stops = ["```\n", "never"];
    let mut decoder = StreamDecoder::new(false);
    let mut found = None;
    for (index, &id) in ids.iter().enumerate() {
        decoder.push(&tokenizer, id)?;
        if let Some(hit) = decoder.find_stop(&stops) {
            found = Some((index, hit));
            break;
        }
    }
    let (index, hit) = found.context("stop string found")?;
    assert_eq!(
        hit,
        StopMatch {
            stop_index: 0,
            byte_offset: "print(1)\n".len()
        }
    );
    assert_eq!(&decoder.text()[..hit.byte_offset], "print(1)\n");
    assert!(
        decoder.text().len() >= hit.byte_offset + 4 && index < ids.len() - 1,
        "stopped as soon as it appeared"
    );
    assert_eq!(
        decoder.find_stop(&stops),
        None,
        "already reported text is not searched again"
    );

    // The earliest start wins when several stop strings match.
    let mut decoder = StreamDecoder::new(false);
    for id in tokenizer.encode("abc STOP xyz END", false)? {
        decoder.push(&tokenizer, id)?;
    }
    let hit = decoder
        .find_stop(&["END", "STOP", ""])
        .context("a stop string")?;
    assert_eq!(
        hit,
        StopMatch {
            stop_index: 1,
            byte_offset: 4
        }
    );
    Ok(())
}

#[test]
fn trained_tokenizer_saves_and_reloads_as_hf_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokenizer = gguf_like(PreTokenizerKind::Qwen2)?.build()?;
    tokenizer.save_hf_dir(dir.path(), Some("{{ messages[0]['content'] }}"))?;
    let reloaded = Tokenizer::from_hf_dir(dir.path())?;
    for probe in PROBES {
        assert_eq!(
            reloaded.encode(probe, false)?,
            tokenizer.encode(probe, false)?,
            "{probe:?}"
        );
    }
    assert_eq!(reloaded.vocab_size(), tokenizer.vocab_size());
    assert_eq!(reloaded.eos_token_ids(), tokenizer.eos_token_ids());
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        dir.path().join("tokenizer_config.json"),
    )?)?;
    assert_eq!(config["eos_token"], "<|endoftext|>");
    assert_eq!(config["chat_template"], "{{ messages[0]['content'] }}");
    Ok(())
}

/// Where ../shared/tools/real-models.sh puts the real GGUF files (`TGRPO_MODELS_DIR`
/// overrides); `None` (after saying so) when the file is absent.
fn real_model(file: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("TGRPO_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| std::path::PathBuf::from(home).join(".cache/tgrpo-models"))
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

#[test]
fn real_qwen_gguf_tokenizer_gives_known_ids() -> Result<()> {
    let Some(path) = real_model("qwen2.5-coder-0.5b-instruct-q4km.gguf") else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let tokenizer = Tokenizer::from_gguf_file(&path)?;
    eprintln!(
        "qwen tokenizer built from gguf metadata in {:?}",
        started.elapsed()
    );
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .with_context(|| format!("{token} in the qwen vocab"))
    };

    assert_eq!(tokenizer.vocab_size(), 151_936);
    let hello_world = tokenizer.encode("Hello world", false)?;
    assert_eq!(hello_world, [id("Hello")?, id("Ġworld")?]);
    assert_eq!(
        hello_world,
        [9707, 1879],
        "Qwen2.5's published ids for \"Hello world\""
    );
    assert_eq!(
        tokenizer.encode("12345", false)?,
        ["1", "2", "3", "4", "5"].map(|digit| id(digit).unwrap())
    );
    assert_eq!(
        tokenizer.encode("<|im_start|>assistant\n", false)?,
        [151644, id("assistant")?, id("Ċ")?]
    );
    assert_eq!(
        tokenizer.eos_token_ids(),
        &[151645, 151643],
        "<|im_end|> (the gguf eos), then <|endoftext|>"
    );
    assert_eq!(tokenizer.pad_token_id(), 151643);
    assert_eq!(
        tokenizer.encode("<tool_call>", false)?,
        [151657],
        "user-defined tokens are whole"
    );

    for probe in PROBES {
        let ids = tokenizer.encode(probe, false)?;
        let expected = probe.replace("e\u{301}", "é");
        assert_eq!(tokenizer.decode(&ids, false)?, expected);
        assert_eq!(stream(&tokenizer, &ids, false)?.1, expected);
    }
    Ok(())
}

#[test]
fn real_smollm_gguf_tokenizer_gives_known_ids() -> Result<()> {
    let Some(path) = real_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return Ok(());
    };
    let tokenizer = Tokenizer::from_gguf_file(&path)?;
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .with_context(|| format!("{token} in the smollm vocab"))
    };
    assert_eq!(tokenizer.vocab_size(), 49_152);
    assert_eq!(
        tokenizer.encode("Hello world", false)?,
        [id("Hello")?, id("Ġworld")?]
    );
    assert_eq!(
        tokenizer.encode("12345", false)?.len(),
        5,
        "smollm splits every digit"
    );
    assert_eq!(
        tokenizer.encode("<|im_start|>user\n", false)?,
        [1, id("user")?, id("Ċ")?]
    );
    assert_eq!(
        tokenizer.eos_token_ids(),
        &[2, 0],
        "<|im_end|> (the gguf eos), then <|endoftext|>"
    );
    for probe in PROBES {
        let ids = tokenizer.encode(probe, false)?;
        assert_eq!(tokenizer.decode(&ids, false)?, *probe);
    }
    Ok(())
}
