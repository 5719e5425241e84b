//! CPU kernels for the decode step: `x (m, k) @ w (n, k)^T` with few rows `m`, optionally
//! fused with a bias and a LoRA branch, for several weight matrices sharing one input.
//!
//! Decoding multiplies a handful of activation rows by every weight matrix. That is
//! memory-bound: the cost should be one pass over the weights whatever `m` is, so a batch of
//! 8 costs little more than a batch of 1. The general GEMM candle uses packs its operands
//! and, measured here at m=8, takes 2.7× the m=1 time (and reaches a third of the memory
//! bandwidth on the 150k-row LM head). These kernels stream each weight row once from
//! memory, keep it in L1 while it meets every activation row, and accumulate in SIMD
//! registers (pulp picks AVX2/AVX-512/NEON at run time, safely).
//!
//! Fusion matters as much as bandwidth for LoRA: unfused, an adapted projection is three
//! matmuls and two element-wise ops, each a separate dispatch. [`fused_linear`] computes
//! `x W^T + bias + scale · h B^T` (with `h = x A^T` from one [`fused_linear`] call over all
//! the A matrices sharing `x`) in a single parallel pass, for q/k/v (or gate/up) at once.
//!
//! Forward only: the train path never comes here (candle's matmul has the backward).

use candle_core::{CpuStorage, Storage, Tensor};
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

/// Largest `m` routed here; above it GEMM's compute efficiency wins.
pub(crate) const MAX_ROWS: usize = 32;

/// Weight rows per parallel task (a block of a few hundred KB of weights).
const ROWS_PER_TASK: usize = 32;

/// Multiply-adds below which a call runs on the calling thread.
const SEQUENTIAL_WORK: usize = 1 << 18;

/// One weight matrix of a [`fused_linear`] call.
pub(crate) struct Segment<'a> {
    /// `(n, k)`.
    pub weight: &'a Tensor,
    /// `(n,)`.
    pub bias: Option<&'a Tensor>,
    /// `(h (m, r), b (n, r), scale)`: adds `scale · h b^T`.
    pub lora: Option<(&'a Tensor, &'a Tensor, f32)>,
}

/// Reads a tensor's contiguous f32 CPU data under its storage read-guard.
fn f32_slice<'g>(guard: &'g Storage, layout: &candle_core::Layout) -> Option<&'g [f32]> {
    match guard {
        Storage::Cpu(CpuStorage::F32(values)) => {
            let (start, end) = layout.contiguous_offsets()?;
            values.get(start..end)
        }
        _ => None,
    }
}

/// `x (m, k) @ segment.weight^T (+ bias) (+ scale · h b^T)` for every segment, as `(m, n_s)`
/// tensors. `None` when an operand is not contiguous f32 on the CPU (the caller falls back
/// to candle ops). Every tensor must have its own storage.
pub(crate) fn fused_linear(
    x: &Tensor,
    segments: &[Segment],
) -> candle_core::Result<Option<Vec<Tensor>>> {
    let (m, k) = x.dims2()?;
    let mut tensors: Vec<&Tensor> = vec![x];
    for s in segments {
        tensors.push(s.weight);
        if let Some(b) = s.bias {
            tensors.push(b);
        }
        if let Some((h, b, _)) = s.lora {
            tensors.push(h);
            tensors.push(b);
        }
    }
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(guards.len());
    for (guard, layout) in &guards {
        match f32_slice(guard, layout) {
            Some(s) => slices.push(s),
            None => return Ok(None),
        }
    }
    let mut next = 1;
    let mut take = || {
        next += 1;
        slices[next - 1]
    };
    let x_data = slices[0];
    let mut plans = Vec::with_capacity(segments.len());
    for s in segments {
        let (n, k2) = s.weight.dims2()?;
        if k2 != k {
            candle_core::bail!("fused linear: weight has {k2} inputs, x has {k}")
        }
        let weight = take();
        let bias = s.bias.map(|_| take());
        let lora = match s.lora {
            Some((h, b, scale)) => {
                let (hm, r) = h.dims2()?;
                if hm != m || b.dims2()? != (n, r) {
                    candle_core::bail!(
                        "fused linear: lora shapes {:?} {:?} for x {:?}",
                        h.dims(),
                        b.dims(),
                        x.dims()
                    )
                }
                Some(Lora {
                    h: take(),
                    b: take(),
                    r,
                    scale,
                })
            }
            None => None,
        };
        plans.push(Plan {
            weight,
            bias,
            lora,
            n,
        });
    }
    // Tasks: (segment, first row, row count), each writing its own transposed block.
    let mut tasks = Vec::new();
    for (seg, plan) in plans.iter().enumerate() {
        let mut j0 = 0;
        while j0 < plan.n {
            let rows = ROWS_PER_TASK.min(plan.n - j0);
            tasks.push((seg, j0, rows));
            j0 += rows;
        }
    }
    let run = |&(seg, j0, rows): &(usize, usize, usize)| {
        let plan = &plans[seg];
        let mut out = vec![0f32; rows * m];
        Arch::new().dispatch(Block {
            x: x_data,
            m,
            k,
            plan,
            j0,
            rows,
            out: &mut out,
        });
        out
    };
    // Small calls (the LoRA A matrices, tiny models) stay on this thread: waking the pool
    // costs more than the work, and on a loaded machine a parallel region can wait a whole
    // scheduler slice for a descheduled worker.
    let weight_elems: usize = plans.iter().map(|p| p.n * k).sum();
    let blocks: Vec<Vec<f32>> = if weight_elems * m <= SEQUENTIAL_WORK {
        tasks.iter().map(run).collect()
    } else {
        tasks.par_iter().map(run).collect()
    };
    let mut outputs: Vec<Vec<f32>> = plans.iter().map(|p| vec![0f32; m * p.n]).collect();
    for (&(seg, j0, rows), block) in tasks.iter().zip(&blocks) {
        let n = plans[seg].n;
        let out = &mut outputs[seg];
        for jj in 0..rows {
            for b in 0..m {
                out[b * n + j0 + jj] = block[jj * m + b];
            }
        }
    }
    let device = x.device();
    let tensors = outputs
        .into_iter()
        .zip(&plans)
        .map(|(values, plan)| Tensor::from_vec(values, (m, plan.n), device))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Some(tensors))
}

struct Lora<'a> {
    h: &'a [f32],
    b: &'a [f32],
    r: usize,
    scale: f32,
}

struct Plan<'a> {
    weight: &'a [f32],
    bias: Option<&'a [f32]>,
    lora: Option<Lora<'a>>,
    n: usize,
}

/// One task: `out[jj * m + b]` for weight rows `j0 .. j0 + rows` of one segment.
struct Block<'a> {
    x: &'a [f32],
    m: usize,
    k: usize,
    plan: &'a Plan<'a>,
    j0: usize,
    rows: usize,
    out: &'a mut [f32],
}

impl WithSimd for Block<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Block {
            x,
            m,
            k,
            plan,
            j0,
            rows,
            out,
        } = self;
        accumulate(
            simd,
            &plan.weight[j0 * k..(j0 + rows) * k],
            x,
            k,
            m,
            1.0,
            out,
        );
        if let Some(bias) = plan.bias {
            for jj in 0..rows {
                let v = bias[j0 + jj];
                out[jj * m..(jj + 1) * m].iter_mut().for_each(|o| *o += v);
            }
        }
        if let Some(lora) = &plan.lora {
            let r = lora.r;
            accumulate(
                simd,
                &lora.b[j0 * r..(j0 + rows) * r],
                lora.h,
                r,
                m,
                lora.scale,
                out,
            );
        }
    }
}

/// `out[j * m + b] += scale · (w_j · x_b)` for every row `w_j` of `w` (`rows × k`) and
/// `x_b` of `x` (`m × k`), blocked two weight rows by four activation rows.
#[inline(always)]
fn accumulate<S: Simd>(
    simd: S,
    w: &[f32],
    x: &[f32],
    k: usize,
    m: usize,
    scale: f32,
    out: &mut [f32],
) {
    let rows = w.len() / k;
    let w_row = |j: usize| &w[j * k..(j + 1) * k];
    let x_row = |b: usize| &x[b * k..(b + 1) * k];
    let mut j = 0;
    // Two weight rows against four activation rows: 8 independent accumulators.
    while j + 2 <= rows {
        let w_rows = [w_row(j), w_row(j + 1)];
        let mut b = 0;
        while b + 4 <= m {
            let sums = dot_block::<S, 2, 4>(
                simd,
                w_rows,
                [x_row(b), x_row(b + 1), x_row(b + 2), x_row(b + 3)],
            );
            for (r, row_sums) in sums.iter().enumerate() {
                for (c, v) in row_sums.iter().enumerate() {
                    out[(j + r) * m + b + c] += scale * v;
                }
            }
            b += 4;
        }
        while b < m {
            let sums = dot_block::<S, 2, 1>(simd, w_rows, [x_row(b)]);
            out[j * m + b] += scale * sums[0][0];
            out[(j + 1) * m + b] += scale * sums[1][0];
            b += 1;
        }
        j += 2;
    }
    if j < rows {
        for b in 0..m {
            out[j * m + b] += scale * dot_block::<S, 1, 1>(simd, [w_row(j)], [x_row(b)])[0][0];
        }
    }
}

/// `R × C` dot products of equal-length rows, each accumulated in its own SIMD register
/// (with two register sets when only one product runs, to hide FMA latency).
#[inline(always)]
fn dot_block<S: Simd, const R: usize, const C: usize>(
    simd: S,
    w: [&[f32]; R],
    x: [&[f32]; C],
) -> [[f32; C]; R] {
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; C]; R];
    let mut acc2 = [[zero; C]; R];
    let w_simd: [&[S::f32s]; R] = w.map(|row| S::as_simd_f32s(row).0);
    let x_simd: [&[S::f32s]; C] = x.map(|row| S::as_simd_f32s(row).0);
    let lanes = w_simd[0].len();
    if R * C == 1 {
        let mut i = 0;
        while i + 2 <= lanes {
            acc[0][0] = simd.mul_add_f32s(w_simd[0][i], x_simd[0][i], acc[0][0]);
            acc2[0][0] = simd.mul_add_f32s(w_simd[0][i + 1], x_simd[0][i + 1], acc2[0][0]);
            i += 2;
        }
        if i < lanes {
            acc[0][0] = simd.mul_add_f32s(w_simd[0][i], x_simd[0][i], acc[0][0]);
        }
    } else {
        for i in 0..lanes {
            for r in 0..R {
                let wv = w_simd[r][i];
                for c in 0..C {
                    acc[r][c] = simd.mul_add_f32s(wv, x_simd[c][i], acc[r][c]);
                }
            }
        }
    }
    let mut out = [[0f32; C]; R];
    let tail_start = w[0].len() - S::as_simd_f32s(w[0]).1.len();
    for r in 0..R {
        for c in 0..C {
            let mut sum = simd.reduce_sum_f32s(simd.add_f32s(acc[r][c], acc2[r][c]));
            for t in tail_start..w[r].len() {
                sum += w[r][t] * x[c][t];
            }
            out[r][c] = sum;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_candle_ops_for_every_small_shape() {
        let dev = Device::Cpu;
        for &(m, k, n, r) in &[
            (1, 64, 7, 4),
            (3, 37, 65, 3),
            (4, 128, 64, 64),
            (5, 896, 33, 16),
            (8, 19, 1, 2),
            (32, 64, 130, 8),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w1 = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let w2 = Tensor::randn(0f32, 1.0, (n + 3, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, n + 3, &dev).unwrap();
            let h = Tensor::randn(0f32, 1.0, (m, r), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, (n, r), &dev).unwrap();
            let out = fused_linear(
                &x,
                &[
                    Segment {
                        weight: &w1,
                        bias: None,
                        lora: Some((&h, &b, 0.5)),
                    },
                    Segment {
                        weight: &w2,
                        bias: Some(&bias),
                        lora: None,
                    },
                ],
            )
            .unwrap()
            .unwrap();
            let e1 = (x.matmul(&w1.t().unwrap()).unwrap()
                + (h.matmul(&b.t().unwrap()).unwrap() * 0.5).unwrap())
            .unwrap();
            let e2 = x
                .matmul(&w2.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap();
            let tol = 1e-4 * (k as f32).sqrt();
            assert!(max_diff(&out[0], &e1) < tol, "({m}, {k}, {n}) lora segment");
            assert!(max_diff(&out[1], &e2) < tol, "({m}, {k}, {n}) bias segment");
        }
    }

    #[test]
    fn declines_what_it_cannot_read() {
        let x = Tensor::zeros((2, 8), candle_core::DType::F64, &Device::Cpu).unwrap();
        let w = Tensor::zeros((3, 8), candle_core::DType::F64, &Device::Cpu).unwrap();
        assert!(
            fused_linear(
                &x,
                &[Segment {
                    weight: &w,
                    bias: None,
                    lora: None
                }]
            )
            .unwrap()
            .is_none()
        );
        let x = Tensor::zeros((8, 2), candle_core::DType::F32, &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        let w = Tensor::zeros((3, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(
            fused_linear(
                &x,
                &[Segment {
                    weight: &w,
                    bias: None,
                    lora: None
                }]
            )
            .unwrap()
            .is_none()
        );
    }
}
