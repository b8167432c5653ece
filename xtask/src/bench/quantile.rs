//! Percentiles of small samples, where a missing value (nothing happened within the bound)
//! ranks above every measured one.

use std::time::Duration;

/// A percentile of samples some of which may be missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantile {
    Within(Duration),
    /// It falls on a missing sample: beyond the bound.
    Beyond,
}

impl Quantile {
    pub fn value(self) -> Option<Duration> {
        match self {
            Self::Within(d) => Some(d),
            Self::Beyond => None,
        }
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `samples`: the smallest value with at least
/// `p`% of the samples at or below it. `None` samples count as larger than any value. `None` for
/// no samples. With fewer than 100 samples, p99 is the largest.
pub fn percentile(samples: &[Option<Duration>], p: f64) -> Option<Quantile> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted: Vec<Option<Duration>> = samples.to_vec();
    // `None` last.
    sorted.sort_by_key(|s| (s.is_none(), *s));
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "sample counts are small"
    )]
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].map_or(Quantile::Beyond, Quantile::Within))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(v: u64) -> Quantile {
        Quantile::Within(Duration::from_millis(v))
    }

    #[test]
    fn nearest_rank() {
        let samples: Vec<_> = (1..=20)
            .rev()
            .map(|v| Some(Duration::from_millis(v)))
            .collect();
        assert_eq!(percentile(&samples, 50.0), Some(within(10)));
        assert_eq!(percentile(&samples, 99.0), Some(within(20)));
        assert_eq!(percentile(&samples, 5.0), Some(within(1)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn missing_values_rank_last() {
        let ms = |v| Some(Duration::from_millis(v));
        let samples = [ms(3), None, ms(1), ms(2)];
        assert_eq!(percentile(&samples, 50.0), Some(within(2)));
        assert_eq!(percentile(&samples, 99.0), Some(Quantile::Beyond));
    }
}
