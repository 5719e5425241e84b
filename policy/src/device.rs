//! Device and dtype strings of the run config (`cpu`, `cuda`, `cuda:N`; `auto`, `f32`,
//! `bf16`, `f16`), parsed in one place for every role that loads the policy.
//!
//! Errors are plain messages: each caller wraps them in its own error type with the
//! config field they came from (`learner.device`, `rollout.dtype`, ...).

use candle_core::{DType, Device};

/// Which device a `device` string names: `None` for the CPU, `Some(ordinal)` for a CUDA
/// device. Parsing touches no hardware, so a config can be validated on any machine.
pub fn parse_device_spec(text: &str) -> Result<Option<usize>, String> {
    match text.trim() {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => Ok(Some(ordinal)),
            _ => Err(format!("`{other}` is not cpu, cuda or cuda:N")),
        },
    }
}

/// Opens the device a `device` string names. A CUDA device in a build without the `cuda`
/// feature fails here, with candle's reason.
pub fn open_device(text: &str) -> Result<Device, String> {
    match parse_device_spec(text)? {
        None => Ok(Device::Cpu),
        Some(ordinal) => Device::new_cuda(ordinal).map_err(|err| format!("cuda:{ordinal}: {err}")),
    }
}

/// The base weights' dtype a `dtype` string names; `auto` is f32 on the CPU (candle's CPU
/// kernels are f32-first) and bf16 on a GPU (the production precision).
pub fn parse_dtype(text: &str, on_cpu: bool) -> Result<DType, String> {
    match text.trim() {
        "auto" => Ok(if on_cpu { DType::F32 } else { DType::BF16 }),
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(format!("`{other}` is not auto, f32, bf16 or f16")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_strings() {
        assert_eq!(parse_device_spec(" cpu ").unwrap(), None);
        assert_eq!(parse_device_spec("cuda").unwrap(), Some(0));
        assert_eq!(parse_device_spec("cuda:3").unwrap(), Some(3));
        let error = parse_device_spec("cuda:x").unwrap_err();
        assert!(error.contains("cuda:x"), "{error}");
        assert!(parse_device_spec("gpu").is_err());
        assert!(open_device("cpu").unwrap().is_cpu());
    }

    #[test]
    fn dtype_strings() {
        assert_eq!(parse_dtype("auto", true).unwrap(), DType::F32);
        assert_eq!(parse_dtype("auto", false).unwrap(), DType::BF16);
        assert_eq!(parse_dtype("bf16", true).unwrap(), DType::BF16);
        assert_eq!(parse_dtype("f16", false).unwrap(), DType::F16);
        let error = parse_dtype("fp8", true).unwrap_err();
        assert!(error.contains("fp8"), "{error}");
    }
}
