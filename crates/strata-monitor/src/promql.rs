//! TEMPORARY STUB written by the main engineer so the rest of the crate compiles; the PromQL
//! helper replaces this whole file with the real engine.
use crate::model::{Labels, Queryable, Series};

pub struct Engine {
    pub lookback_ms: i64,
}
pub enum Value {
    Scalar(i64, f64),
    String(i64, String),
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
}
pub struct Sample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("parse: {0}")]
    Parse(String),
    #[error("{0}")]
    Eval(String),
    #[error("timeout")]
    Timeout,
    #[error("too many samples")]
    TooManySamples,
}
impl Engine {
    pub fn instant(
        &self,
        _q: &dyn Queryable,
        _query: &str,
        _t_ms: i64,
    ) -> Result<Value, QueryError> {
        Err(QueryError::Eval("stub".into()))
    }
    pub fn range(
        &self,
        _q: &dyn Queryable,
        _query: &str,
        _s: i64,
        _e: i64,
        _st: i64,
    ) -> Result<Vec<Series>, QueryError> {
        Err(QueryError::Eval("stub".into()))
    }
}
