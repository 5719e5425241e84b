//! Tokenizer: from tokenizer.json or GGUF metadata (owned by the policy-tokenizer helper).
