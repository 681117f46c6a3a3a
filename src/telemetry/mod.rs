//! What kproxy tells its operators: per-request observation, Prometheus metrics, the access log and
//! `-v` logging levels.

pub mod access_log;
pub mod health;
pub mod hooks;
pub mod logging;
pub mod metrics;
pub mod observe;
