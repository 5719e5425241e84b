//! Chat template rendering with the model's own Jinja template (owned by the policy-tokenizer helper).
