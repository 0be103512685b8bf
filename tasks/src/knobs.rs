//! # knobs — from a level name and `--set` overrides to a validated task config
//!
//! Every task is a serde config plus a pure build function, and every task gets its config the
//! same way, so that way lives here once:
//!
//! 1. [`resolve_config`]: the task's defaults, then the named level's overrides, then the
//!    `key=value` overrides ([`set_keys`]), as a JSON object. Unknown levels and keys are errors
//!    that name what is known.
//! 2. [`parse_config`]: serde into the task's config struct (`deny_unknown_fields`, so a stray
//!    key given as JSON is an error too).
//! 3. The task's constructor validates its knobs with a [`Knobs`] checker, so every range error
//!    reads the same: `` invalid config for task `T`: key = value must be in lo..=hi ``, on one
//!    line, with the bound spelled out when it depends on another knob.
//!
//! [`to_config_value`] goes the other way: the canonical JSON a task stores and hashes.

use crate::{TaskError, TaskInfo};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};
use std::fmt::Display;
use std::ops::RangeInclusive;

/// Defaults ← level overrides ← `sets`, as a JSON object (not yet deserialized or validated).
/// `level` defaults to the task's default level.
pub fn resolve_config(
    info: &TaskInfo,
    level: Option<&str>,
    sets: &[(String, String)],
) -> Result<Value, TaskError> {
    let mut cfg = info.defaults.clone();
    let level = level.unwrap_or(info.default_level);
    let (_, overrides) = info
        .levels
        .iter()
        .find(|(n, _)| *n == level)
        .ok_or_else(|| TaskError::UnknownLevel {
            task: info.name.into(),
            level: level.into(),
            known: info
                .levels
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let obj = cfg
        .as_object_mut()
        .expect("task defaults serialize to a JSON object");
    let known = || obj_keys(&info.defaults);
    if let Some(o) = overrides.as_object() {
        for (k, v) in o {
            obj.insert(k.clone(), v.clone());
        }
    }
    set_keys(obj, sets).map_err(|key| TaskError::UnknownKey {
        task: info.name.into(),
        key,
        known: known(),
    })?;
    Ok(cfg)
}

/// Difficulty levels that each pin the same knobs to one value: with keys
/// `["min_hops", "max_hops"]`, `("k4", 4)` is the level `k4 = {"min_hops": 4, "max_hops": 4}`.
/// Level names stay spelled out at the call site (they are what users type and what manifests
/// record); only the override objects are built here.
pub fn pinned<V: Into<Value> + Copy>(
    keys: &[&str],
    levels: &[(&'static str, V)],
) -> Vec<(&'static str, Value)> {
    levels
        .iter()
        .map(|&(name, v)| {
            let set = keys.iter().map(|k| (k.to_string(), v.into())).collect();
            (name, Value::Object(set))
        })
        .collect()
}

/// Apply `key=value` overrides to an existing JSON object. A value is parsed as JSON when it can
/// be (`4`, `0.01`, `true`, `"x"`), otherwise taken as a bare string. Only existing keys may be
/// set: the first unknown key is returned as the error (nothing after it is applied).
///
/// Public because the harness applies its own `--set` overrides with the same rules.
pub fn set_keys(obj: &mut Map<String, Value>, sets: &[(String, String)]) -> Result<(), String> {
    for (k, v) in sets {
        if !obj.contains_key(k) {
            return Err(k.clone());
        }
        let parsed = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.clone()));
        obj.insert(k.clone(), parsed);
    }
    Ok(())
}

fn obj_keys(v: &Value) -> String {
    v.as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// Deserialize a task config from JSON (serde errors become one-line [`TaskError::Config`]).
pub fn parse_config<C: DeserializeOwned>(task: &str, cfg: Value) -> Result<C, TaskError> {
    serde_json::from_value(cfg).map_err(|e| TaskError::Config {
        task: task.into(),
        msg: e.to_string(),
    })
}

/// Serialize a config struct to the canonical JSON `Value` stored by a task.
pub fn to_config_value<C: Serialize>(c: &C) -> Value {
    serde_json::to_value(c).expect("configs serialize to JSON")
}

/// `Ok` if `ok`, else a [`TaskError::Config`] for `task` with message `msg()` (built only on
/// failure). For constraints between knobs that no [`Knobs`] range expresses.
pub fn check(task: &str, ok: bool, msg: impl FnOnce() -> String) -> Result<(), TaskError> {
    if ok {
        Ok(())
    } else {
        Err(TaskError::Config {
            task: task.into(),
            msg: msg(),
        })
    }
}

/// One end of a real interval, for [`Knobs::real`].
#[derive(Clone, Copy, Debug)]
pub enum Edge {
    /// The end value is allowed (`[` / `]`).
    Closed(f64),
    /// The end value is excluded (`(` / `)`).
    Open(f64),
}

/// Range checks of one task's knobs, all with the same one-line message shape.
///
/// ```text
/// hops = 0 must be in 1..=64
/// min_depth = 5 must be in 1..=max_depth = 1..=4
/// seq_len = 127 must be even and in 4..=65536
/// op_prob = 0 must be in [0.01, 1]
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Knobs<'a> {
    task: &'a str,
}

impl<'a> Knobs<'a> {
    pub fn new(task: &'a str) -> Self {
        Knobs { task }
    }

    /// `v` in the inclusive range.
    pub fn int<T: PartialOrd + Display>(
        &self,
        key: &str,
        v: T,
        range: RangeInclusive<T>,
    ) -> Result<(), TaskError> {
        self.require(range.contains(&v), || {
            format!("{key} = {v} must be in {}..={}", range.start(), range.end())
        })
    }

    /// `v` in a range whose ends depend on other knobs; `expr` spells the range in knob names
    /// (e.g. `"1..=max_depth"`) and the message gives it in numbers too, so a failed override
    /// says both which knob bounds it and where the bound is now.
    pub fn int_in<T: PartialOrd + Display>(
        &self,
        key: &str,
        v: T,
        expr: &str,
        range: RangeInclusive<T>,
    ) -> Result<(), TaskError> {
        self.require(range.contains(&v), || {
            format!(
                "{key} = {v} must be in {expr} = {}..={}",
                range.start(),
                range.end()
            )
        })
    }

    /// `v` even and in the inclusive range (sequence lengths built from pairs).
    pub fn even(&self, key: &str, v: u32, range: RangeInclusive<u32>) -> Result<(), TaskError> {
        self.require(range.contains(&v) && v.is_multiple_of(2), || {
            format!(
                "{key} = {v} must be even and in {}..={}",
                range.start(),
                range.end()
            )
        })
    }

    /// `v` finite and in the interval `lo, hi` (each end open or closed). NaN and infinities
    /// are rejected whatever the ends, since JSON overrides can spell neither on purpose.
    pub fn real(&self, key: &str, v: f64, lo: Edge, hi: Edge) -> Result<(), TaskError> {
        let above = match lo {
            Edge::Closed(l) => v >= l,
            Edge::Open(l) => v > l,
        };
        let below = match hi {
            Edge::Closed(h) => v <= h,
            Edge::Open(h) => v < h,
        };
        self.require(v.is_finite() && above && below, || {
            let (open, l) = match lo {
                Edge::Closed(l) => ('[', l),
                Edge::Open(l) => ('(', l),
            };
            let (close, h) = match hi {
                Edge::Closed(h) => (']', h),
                Edge::Open(h) => (')', h),
            };
            format!("{key} = {v} must be in {open}{l}, {h}{close}")
        })
    }

    /// A constraint between knobs, with its own message (see [`check`]).
    pub fn require(&self, ok: bool, msg: impl FnOnce() -> String) -> Result<(), TaskError> {
        check(self.task, ok, msg)
    }
}

/// `key=value` overrides from string pairs, for tests that build tasks through [`crate::build`].
#[cfg(test)]
pub(crate) fn sets(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The error of building `task` at `level` with overrides `s`, checked to be one line that names
/// the task (panics if the build succeeds). For the modules' range-validation tests.
#[cfg(test)]
pub(crate) fn rejection(task: &str, level: Option<&str>, s: &[(&str, &str)]) -> String {
    let e = crate::build(task, level, &sets(s))
        .err()
        .unwrap_or_else(|| panic!("{task} {s:?} accepted"))
        .to_string();
    assert!(e.contains(task) && !e.contains('\n'), "{task} {s:?}: {e}");
    e
}

/// Each `(key, value, needle)`: the single override `key=value` is rejected ([`rejection`]) with
/// a message containing `needle` (normally the knob's name).
#[cfg(test)]
pub(crate) fn assert_rejected(task: &str, level: Option<&str>, bad: &[(&str, &str, &str)]) {
    for &(k, v, needle) in bad {
        let e = rejection(task, level, &[(k, v)]);
        assert!(e.contains(needle), "{task} {k}={v}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<(), TaskError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn messages_are_one_line_and_name_the_bounds() {
        let k = Knobs::new("t");
        assert!(k.int("hops", 1u32, 1..=64).is_ok());
        assert_eq!(
            msg(k.int("hops", 0u32, 1..=64)),
            "invalid config for task `t`: hops = 0 must be in 1..=64"
        );
        assert_eq!(
            msg(k.int_in("min_depth", 5u32, "1..=max_depth", 1..=4)),
            "invalid config for task `t`: min_depth = 5 must be in 1..=max_depth = 1..=4"
        );
        assert!(k.even("seq_len", 128, 4..=65_536).is_ok());
        assert!(msg(k.even("seq_len", 127, 4..=65_536)).ends_with("must be even and in 4..=65536"));
        assert!(msg(k.even("seq_len", 2, 4..=65_536)).contains("seq_len = 2"));
        let unit = |v| k.real("p", v, Edge::Closed(0.0), Edge::Open(1.0));
        assert!(unit(0.0).is_ok() && unit(0.5).is_ok());
        assert!(msg(unit(1.0)).ends_with("p = 1 must be in [0, 1)"));
        assert!(unit(f64::NAN).is_err());
        let pos = |v| k.real("a", v, Edge::Open(0.0), Edge::Closed(1.0));
        assert!(pos(1.0).is_ok());
        assert!(msg(pos(0.0)).ends_with("a = 0 must be in (0, 1]"));
        assert!(pos(f64::INFINITY).is_err());
    }

    #[test]
    fn overrides_apply_after_the_level_and_reject_unknown_keys() {
        let info = crate::vartrack::info();
        let cfg = resolve_config(
            &info,
            Some("hops4"),
            &sets(&[("hops", "8"), ("chains", "3")]),
        )
        .unwrap();
        assert_eq!(cfg["hops"], 8);
        assert_eq!(cfg["chains"], 3);
        let e = resolve_config(&info, Some("hops9"), &[]).err().unwrap();
        assert!(e.to_string().contains("known levels: hops1, hops2"), "{e}");
        let e = resolve_config(&info, None, &sets(&[("hop", "1")]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("unknown config key `hop`"), "{e}");
        let mut obj = Map::new();
        obj.insert("x".into(), Value::from(1));
        set_keys(&mut obj, &sets(&[("x", "word")])).unwrap();
        assert_eq!(
            obj["x"], "word",
            "a value that is not JSON is a bare string"
        );
    }
}
