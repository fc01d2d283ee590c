//! What a run measured: per phase and repetition, the load's outcome and the processes' usage.

use crate::load::Outcome;
use crate::procstat::Usage;
use crate::scenarios::Phase;

/// One side of one repetition of a phase.
#[derive(Clone)]
pub struct Measured {
    pub outcome: Outcome,
    /// The mock's CPU and memory over the measured window.
    pub mock: Usage,
    /// tollgate's, when the requests went through it.
    pub tollgate: Option<Usage>,
}

/// Which way the requests went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Direct,
    Tollgate,
    /// Through a second tollgate on a fresh database, measured right after the first in each
    /// repetition (scenario 4's yardstick: both see the machine as it is at that moment).
    Control,
    /// Through a bare reverse proxy (nginx) in tollgate's place, measured right after
    /// tollgate in each repetition: what one more hop costs on this machine.
    Proxy,
}

/// Every repetition of a phase, each way.
#[derive(Clone)]
pub struct PhaseResult {
    pub phase: Phase,
    pub direct: Vec<Measured>,
    pub tollgate: Vec<Measured>,
    /// Empty unless the scenario has a control.
    pub control: Vec<Measured>,
    /// Empty unless the scenario measures the reference proxy (and nginx was found).
    pub proxy: Vec<Measured>,
}

impl PhaseResult {
    pub fn new(phase: &Phase) -> Self {
        Self {
            phase: phase.clone(),
            direct: Vec::new(),
            tollgate: Vec::new(),
            control: Vec::new(),
            proxy: Vec::new(),
        }
    }

    pub fn side(&self, side: Side) -> &[Measured] {
        match side {
            Side::Direct => &self.direct,
            Side::Tollgate => &self.tollgate,
            Side::Control => &self.control,
            Side::Proxy => &self.proxy,
        }
    }

    /// The median over repetitions of `f` on one side; NaN when there is none.
    pub fn median(&self, side: Side, f: impl Fn(&Measured) -> f64) -> f64 {
        median(self.side(side).iter().map(f).collect())
    }

    /// The median over repetitions of `f` on `side` divided by `f` on `by` in the same
    /// repetition (the two measured seconds apart); NaN when there is none.
    pub fn paired_ratio(&self, side: Side, by: Side, f: impl Fn(&Measured) -> f64) -> f64 {
        let (a, b) = (self.side(side), self.side(by));
        median(a.iter().zip(b).map(|(a, b)| f(a) / f(b)).collect())
    }

    /// Errors summed over repetitions on one side.
    pub fn errors(&self, side: Side) -> u64 {
        self.side(side).iter().map(|m| m.outcome.errors).sum()
    }
}

/// tollgate's books after a scenario: successful replies against charges and usage rows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Billing {
    pub replies: u64,
    pub charges: u64,
    pub usage_rows: u64,
}

/// One scenario's figures, notes and anything that went wrong.
#[derive(Clone, Default)]
pub struct ScenarioResult {
    pub id: String,
    pub title: String,
    pub notes: Vec<String>,
    pub phases: Vec<PhaseResult>,
    pub billing: Option<Billing>,
    /// tollgate with no load at all, right after start and the probes.
    pub idle: Option<Usage>,
    /// What failed: setup, a crash, the ledger check, billing that does not add up.
    pub problems: Vec<String>,
}

impl ScenarioResult {
    pub fn phase(&self, key: &str) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.phase.key == key)
    }
}

/// The median (mean of the middle two for an even count); NaN for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
