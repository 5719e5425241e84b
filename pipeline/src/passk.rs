//! The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models
//! Trained on Code", eq. 1).
//!
//! With `n` samples of which `c` pass, pass@k = 1 − C(n−c, k) / C(n, k): the chance that
//! at least one of k samples drawn without replacement from the n passes. It is computed
//! as the product 1 − Π_{i=n−c+1}^{n} (1 − k/i), which never forms a binomial coefficient
//! and so neither overflows nor loses precision at n = 200.

/// pass@k for one task with `n` samples of which `correct` passed; `None` when `k > n`
/// (the estimator is undefined: fewer samples than draws).
pub fn pass_at_k(n: usize, correct: usize, k: usize) -> Option<f64> {
    if k == 0 || k > n || correct > n {
        return None;
    }
    if n - correct < k {
        return Some(1.0);
    }
    let product: f64 = ((n - correct + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    Some(1.0 - product)
}

/// Mean pass@k over tasks given as `(n, correct)` pairs; `None` when any task has fewer
/// than `k` samples or there are no tasks.
pub fn mean_pass_at_k(tasks: &[(usize, usize)], k: usize) -> Option<f64> {
    if tasks.is_empty() {
        return None;
    }
    let sum = tasks
        .iter()
        .map(|&(n, correct)| pass_at_k(n, correct, k))
        .sum::<Option<f64>>()?;
    Some(sum / tasks.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 − C(n−c, k)/C(n, k) with exact integer binomials, for small n.
    fn by_binomials(n: u64, c: u64, k: u64) -> f64 {
        fn choose(n: u64, k: u64) -> f64 {
            if k > n {
                return 0.0;
            }
            (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
        }
        1.0 - choose(n - c, k) / choose(n, k)
    }

    #[test]
    fn matches_the_binomial_definition() {
        for n in 1..=20u64 {
            for c in 0..=n {
                for k in 1..=n {
                    let estimate = pass_at_k(n as usize, c as usize, k as usize).unwrap();
                    let exact = by_binomials(n, c, k);
                    assert!(
                        (estimate - exact).abs() < 1e-12,
                        "n={n} c={c} k={k}: {estimate} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn hand_worked_values() {
        // n=5, c=2, k=2: 1 − C(3,2)/C(5,2) = 1 − 3/10.
        assert!((pass_at_k(5, 2, 2).unwrap() - 0.7).abs() < 1e-12);
        // pass@1 is the fraction correct.
        assert!((pass_at_k(10, 3, 1).unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 0, 5), Some(0.0));
        assert_eq!(pass_at_k(10, 8, 5), Some(1.0));
        assert_eq!(pass_at_k(4, 1, 5), None);
        assert_eq!(pass_at_k(4, 1, 0), None);
    }

    #[test]
    fn large_n_stays_finite_and_monotone_in_k() {
        let mut previous = 0.0;
        for k in [1, 5, 10, 25, 50, 100] {
            let value = pass_at_k(200, 7, k).unwrap();
            assert!(value.is_finite() && value >= previous, "k={k}: {value}");
            previous = value;
        }
    }

    #[test]
    fn mean_over_tasks() {
        let tasks = [(4, 4), (4, 0), (4, 2)];
        assert!((mean_pass_at_k(&tasks, 1).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(mean_pass_at_k(&[(4, 1), (2, 1)], 3), None);
        assert_eq!(mean_pass_at_k(&[], 1), None);
    }
}
