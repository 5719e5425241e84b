//! `x W^T` for a frozen weight `W`, whose backward computes only the gradient of `x`.
//!
//! candle 0.11's matmul backward always computes the gradients of both operands. For a
//! base projection of a LoRA model that is wasted work: `W` is a constant, yet its
//! `(out, in)` gradient — as many multiply-adds as the forward itself — is computed and
//! kept in the gradient store (as much memory as the base weights) for every linear layer
//! and the LM head. Detaching `W` does not help (the op still computes it). This custom op
//! runs the same forward (candle's own matmul kernel on the storage: gemm on the CPU,
//! cuBLAS on CUDA) and a backward of just `grad · W`, a third less backward work.
//! The finite-difference gradient checks (tests/gradients.rs) cover it.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Shape, Storage, Tensor,
};

/// The op: holds the (shared, never copied) weight `(n, k)`; applied to `x (m, k)`.
struct FrozenLinear {
    weight: Tensor,
}

impl FrozenLinear {
    /// `(m, n, k)` of `x (m, k) @ W^T`, after checking the shapes agree.
    fn dims(&self, layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (m, k) = layout.shape().dims2()?;
        let (n, k2) = self.weight.dims2()?;
        if k != k2 {
            candle_core::bail!("frozen linear: weight has {k2} inputs, x has {k}")
        }
        Ok((m, n, k))
    }
}

/// Runs the backend's matmul of `x` (its storage and layout) with `W^T`.
macro_rules! forward {
    ($self:ident, $storage:ident, $layout:ident, $variant:ident, $device:literal) => {{
        let (m, n, k) = $self.dims($layout)?;
        let (weight, weight_layout) = $self.weight.storage_and_layout();
        let Storage::$variant(weight) = &*weight else {
            candle_core::bail!(concat!("frozen linear: the weight is not on the ", $device))
        };
        let weight_t = weight_layout.transpose(0, 1)?;
        let out = $storage.matmul(weight, (1, m, n, k), $layout, &weight_t)?;
        Ok((out, Shape::from((m, n))))
    }};
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward!(self, storage, layout, Cpu, "cpu")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        forward!(self, storage, layout, Cuda, "cuda device")
    }

    fn metal_fwd(
        &self,
        storage: &MetalStorage,
        layout: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        forward!(self, storage, layout, Metal, "metal device")
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // d(x W^T)/dx: grad (m, n) @ W (n, k). Nothing for W.
        Ok(Some(grad_res.matmul(&self.weight)?))
    }
}

/// `x (m, k) @ weight (n, k)^T` as `(m, n)`; differentiable in `x` only.
pub(crate) fn frozen_linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op1(FrozenLinear {
        weight: weight.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap()
    }

    #[test]
    fn same_values_and_input_gradient_as_matmul_and_no_weight_gradient() {
        let device = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (5, 7), &device).unwrap();
        let weight = Tensor::randn(0f32, 1.0, (3, 7), &device).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (5, 3), &device).unwrap();

        let ours = frozen_linear(x.as_tensor(), &weight).unwrap();
        let plain = x.as_tensor().matmul(&weight.t().unwrap()).unwrap();
        let diff = max_abs_diff(&ours, &plain);
        assert!(diff < 1e-5, "forward differs by {diff}");

        let backward = |y: Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (grads, plain_grads) = (backward(ours), backward(plain));
        let gx = grads.get(x.as_tensor()).expect("x gradient");
        let plain_gx = plain_grads.get(x.as_tensor()).expect("x gradient");
        let diff = max_abs_diff(gx, plain_gx);
        assert!(diff < 1e-5, "input gradient differs by {diff}");
        // The plain matmul stores a gradient for `W^T`, ours stores none for anything but x.
        assert_eq!(plain_grads.get_ids().count(), grads.get_ids().count() + 1);
    }

    #[test]
    fn rejects_mismatched_shapes_and_works_in_f64() {
        let device = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F64, &device).unwrap();
        let weight = Tensor::ones((3, 4), DType::F64, &device).unwrap();
        assert_eq!(frozen_linear(&x, &weight).unwrap().dims(), &[2, 3]);
        let bad = Tensor::ones((3, 5), DType::F64, &device).unwrap();
        let err = frozen_linear(&x, &bad).unwrap_err().to_string();
        assert!(err.contains("frozen linear"), "{err}");
    }
}
