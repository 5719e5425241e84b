//! Loading: single-file and sharded HF directories agree, the hub loader serves a pinned
//! revision from a hub-layout cache (offline, and online with the network unreachable),
//! and broken inputs give errors that name them.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use tgrpo_policy::loading::{load_dir, resolve_hub};
use tgrpo_policy::{
    Family, ForwardMode, HubSource, LoadOptions, Model, ModelSource, Policy, load_model, tiny,
};

fn logits(model: &Model) -> Tensor {
    let tokens = Tensor::new(&[3u32, 1, 4, 1, 5, 9, 2, 6], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&tokens, None, ForwardMode::Inference)
        .unwrap()
}

fn same(a: &Model, b: &Model) -> bool {
    let d = (logits(a) - logits(b))
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    d.to_scalar::<f32>().unwrap() == 0.0
}

/// Rewrites `dir`'s single `model.safetensors` as two shards plus an index.
fn shard(dir: &Path) {
    let all = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let tensors: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), all[*n].clone()))
            .collect();
        candle_core::safetensors::save(&tensors, dir.join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
}

#[test]
fn sharded_and_single_file_directories_load_the_same_model() {
    let single = tempfile::tempdir().unwrap();
    tiny::write_hf_dir(single.path(), Family::Llama, 5).unwrap();
    let (a, files) = load_dir(single.path(), &LoadOptions::default()).unwrap();
    assert!(
        files.tokenizer_json.is_some()
            && files.tokenizer_config_json.is_some()
            && files.generation_config_json.is_some()
    );
    let sharded = tempfile::tempdir().unwrap();
    tiny::write_hf_dir(sharded.path(), Family::Llama, 5).unwrap();
    shard(sharded.path());
    let (b, _) = load_dir(sharded.path(), &LoadOptions::default()).unwrap();
    assert!(same(&a, &b));
    // The in-memory tiny model is the one on disk.
    assert!(same(
        &a,
        &tiny::model(Family::Llama, 5, &Device::Cpu, DType::F32).unwrap()
    ));
    // A missing shard is named.
    std::fs::remove_file(sharded.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_dir(sharded.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write_hf_dir(dir.path(), Family::Qwen2, 5).unwrap();
    let mut all =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    all.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&all, dir.path().join("model.safetensors")).unwrap();
    let err = load_dir(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.1") && err.contains("up_proj"),
        "{err}"
    );
    all.insert(
        "model.layers.1.mlp.up_proj.weight".into(),
        Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&all, dir.path().join("model.safetensors")).unwrap();
    let err = load_dir(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("up_proj") && err.contains("shape"), "{err}");
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"qwen2\",",
    )
    .unwrap();
    let err = load_dir(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json") && err.contains("line"), "{err}");
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A hub cache as `huggingface_hub` / hf-hub lay it out: blobs, a snapshot per commit whose
/// files point into the blobs (copies here), and `refs/main` naming the commit.
fn hub_cache(root: &Path) {
    let repo = root.join("models--tgrpo--tiny-qwen");
    let snapshot = repo.join("snapshots").join(COMMIT);
    tiny::write_hf_dir(&snapshot, Family::Qwen2, 6).unwrap();
    shard(&snapshot);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), COMMIT).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
}

fn hub(root: &Path, revision: &str, offline: bool) -> HubSource {
    HubSource {
        repo_id: "tgrpo/tiny-qwen".into(),
        revision: revision.into(),
        cache_dir: Some(root.to_path_buf()),
        offline,
        // Nothing listens here: an online lookup that misses the cache fails fast.
        endpoint: Some("http://127.0.0.1:9".into()),
    }
}

#[test]
fn hub_sources_resolve_from_the_cache_by_branch_or_commit_offline_and_online() {
    let cache = tempfile::tempdir().unwrap();
    hub_cache(cache.path());
    let expected = tiny::model(Family::Qwen2, 6, &Device::Cpu, DType::F32).unwrap();
    let snapshot = cache
        .path()
        .join("models--tgrpo--tiny-qwen/snapshots")
        .join(COMMIT);
    for (revision, offline) in [("main", true), (COMMIT, true), ("main", false)] {
        let source = hub(cache.path(), revision, offline);
        assert_eq!(
            resolve_hub(&source).unwrap(),
            snapshot,
            "{revision} offline={offline}"
        );
        let (model, files) =
            load_model(&ModelSource::Hub(source), &LoadOptions::default()).unwrap();
        assert!(same(&model, &expected));
        assert_eq!(files.dir.as_deref(), Some(snapshot.as_path()));
    }
    // The whole policy (tokenizer and chat template too) loads from the hub cache.
    let policy = Policy::load(
        &ModelSource::Hub(hub(cache.path(), COMMIT, true)),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(policy.base_model_name(), "tgrpo/tiny-qwen");
    assert!(!policy.eos_token_ids().is_empty());
    // An unknown revision, offline, names the repo and the revision.
    let err = resolve_hub(&hub(cache.path(), "v9", true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tgrpo/tiny-qwen@v9"), "{err}");
    // A shard missing from the cache is found before any weights are read.
    std::fs::remove_file(snapshot.join("model-00001-of-00002.safetensors")).unwrap();
    let err = resolve_hub(&hub(cache.path(), "main", true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
    // Online with the shard gone: the download is attempted and its failure reported.
    let err = resolve_hub(&hub(cache.path(), "main", false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
}

#[test]
fn model_source_strings_parse() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        ModelSource::parse(dir.path().to_str().unwrap()),
        ModelSource::Dir(dir.path().to_path_buf())
    );
    let gguf = dir.path().join("m.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    assert_eq!(
        ModelSource::parse(gguf.to_str().unwrap()),
        ModelSource::Gguf(gguf.clone())
    );
    assert_eq!(
        ModelSource::parse(
            "Qwen/Qwen2.5-Coder-1.5B-Instruct@2e1fd397ee46e1388853d2af2c993145b0f1098a"
        ),
        ModelSource::Hub(HubSource::new(
            "Qwen/Qwen2.5-Coder-1.5B-Instruct",
            "2e1fd397ee46e1388853d2af2c993145b0f1098a"
        ))
    );
    assert_eq!(
        ModelSource::parse("org/name"),
        ModelSource::Hub(HubSource::new("org/name", "main"))
    );
}
