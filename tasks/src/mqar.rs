//! mqar — STUB, to be implemented.
use crate::{Metric, Sample, Task, TaskError, TaskInfo};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

pub fn info() -> TaskInfo {
    TaskInfo { name: "mqar", about: "stub", defaults: json!({}), levels: vec![("default", json!({}))], default_level: "default" }
}

pub struct Mqar;

impl Mqar {
    pub fn from_json(_cfg: Value) -> Result<Self, TaskError> {
        Err(TaskError::Config { task: "mqar".into(), msg: "not implemented yet".into() })
    }
}

impl Task for Mqar {
    fn name(&self) -> &'static str { "mqar" }
    fn config(&self) -> Value { json!({}) }
    fn vocab_size(&self) -> usize { 1 }
    fn max_len(&self) -> usize { 1 }
    fn eos_id(&self) -> Option<u32> { None }
    fn token_str(&self, id: u32) -> String { id.to_string() }
    fn sample(&self, _rng: &mut ChaCha8Rng) -> Sample { unimplemented!() }
    fn score(&self, _ex: &crate::Example, _generated: &[u32]) -> bool { false }
    fn chance(&self) -> f64 { 0.0 }
    fn metric(&self) -> Metric { Metric::TeacherForced }
}
