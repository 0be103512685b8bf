//! The statistics of a verdict: Student's t distribution (through the regularised incomplete beta
//! function) and Welch's unequal-variance t-test with the confidence interval of a difference of
//! means. Pure functions; formulas from Abramowitz & Stegun 26.5 / 26.7 and Welch (1947).

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let mut a = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        for aa in [
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ] {
            d = 1.0 + aa * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + aa / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b), 0 ≤ x ≤ 1.
pub fn reg_inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The fraction converges fast for x < (a+1)/(a+b+2); use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Two-sided tail probability P(|T| ≥ |t|) of Student's t with `df` (> 0, not necessarily whole)
/// degrees of freedom.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    reg_inc_beta(df / 2.0, 0.5, df / (df + t * t))
}

/// The t with P(|T| ≥ t) = `p` (two-sided), by bisection on [`t_two_sided_p`].
pub fn t_two_sided_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1e6f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_two_sided_p(mid, df) > p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Welch's t-test of mean(a) − mean(b).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Welch {
    /// mean(a) − mean(b).
    pub diff: f64,
    /// Half-width of its 95% confidence interval (Welch–Satterthwaite degrees of freedom).
    pub ci95: f64,
    pub t: f64,
    pub df: f64,
    /// Two-sided p-value of "the means are equal".
    pub p: f64,
}

fn mean_var(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    (
        m,
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0),
    )
}

/// Welch's test; `None` unless both samples have at least two values. When both samples have
/// zero variance the difference is exact: p = 1 if the means are equal, else 0, with a zero CI.
pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let ((ma, va), (mb, vb)) = (mean_var(a), mean_var(b));
    let (sa, sb) = (va / a.len() as f64, vb / b.len() as f64);
    let diff = ma - mb;
    let se2 = sa + sb;
    if se2 == 0.0 {
        let p = if diff == 0.0 { 1.0 } else { 0.0 };
        let t = if diff == 0.0 {
            0.0
        } else {
            diff.signum() * f64::INFINITY
        };
        return Some(Welch {
            diff,
            ci95: 0.0,
            t,
            df: f64::INFINITY,
            p,
        });
    }
    let df = se2 * se2 / (sa * sa / (a.len() as f64 - 1.0) + sb * sb / (b.len() as f64 - 1.0));
    let t = diff / se2.sqrt();
    Some(Welch {
        diff,
        ci95: t_two_sided_quantile(0.05, df) * se2.sqrt(),
        t,
        df,
        p: t_two_sided_p(t, df),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn student_t_matches_its_tables() {
        // Cauchy (df 1): P(|T| > 1) = 1/2 exactly; df 2 has a closed form 1 − t/sqrt(2 + t²).
        assert!((t_two_sided_p(1.0, 1.0) - 0.5).abs() < 1e-12);
        for t in [0.3, 1.0, 2.5, 7.0] {
            let exact = 1.0 - t / (2.0f64 + t * t).sqrt();
            assert!((t_two_sided_p(t, 2.0) - exact).abs() < 1e-12, "t {t}");
        }
        // The 97.5% quantiles the leaderboard's table holds (3 digits).
        for (df, q) in [
            (1, 12.706),
            (2, 4.303),
            (4, 2.776),
            (10, 2.228),
            (30, 2.042),
        ] {
            let got = t_two_sided_quantile(0.05, df as f64);
            assert!((got - q).abs() < 1e-3, "df {df}: {got} vs {q}");
            assert!((got - crate::leaderboard::t975(df)).abs() < 1e-3);
        }
        assert_eq!(t_two_sided_p(0.0, 5.0), 1.0);
    }

    #[test]
    fn welch_by_hand() {
        // a: mean 3, var 2.5; b: mean 6, var 10 (n = 5 each): se² = 0.5 + 2 = 2.5,
        // t = −3/√2.5, df = 2.5² / (0.5²/4 + 2²/4) = 6.25 / 1.0625.
        let w = welch(&[1.0, 2.0, 3.0, 4.0, 5.0], &[2.0, 4.0, 6.0, 8.0, 10.0]).unwrap();
        assert_eq!(w.diff, -3.0);
        assert!((w.t + 3.0 / 2.5f64.sqrt()).abs() < 1e-12);
        assert!((w.df - 6.25 / 1.0625).abs() < 1e-12);
        // 0.1075312 by numerical integration of the t density (midpoint rule, 2e5 steps).
        assert!((w.p - 0.107_531_2).abs() < 1e-6, "{w:?}");
        assert!((t_two_sided_p(w.t, w.df) - w.p).abs() < 1e-15);
        assert!((w.ci95 - t_two_sided_quantile(0.05, w.df) * 2.5f64.sqrt()).abs() < 1e-12);
        // Symmetric, and exact when nothing varies.
        let v = welch(&[2.0, 4.0, 6.0, 8.0, 10.0], &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!((v.diff, v.p), (3.0, w.p));
        assert_eq!(welch(&[1.0, 1.0], &[1.0, 1.0]).unwrap().p, 1.0);
        assert_eq!(welch(&[1.0, 1.0], &[0.5, 0.5]).unwrap().p, 0.0);
        assert!(welch(&[1.0], &[1.0, 2.0]).is_none());
    }
}
