//! The process environment, read through a trait so tests inject their own values instead of calling
//! `std::env::set_var` (which races with every other test thread).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

/// A source of environment variables.
pub trait Env: Send + Sync {
    /// The value of `key`, or `None` when it is unset or not valid UTF-8.
    fn var(&self, key: &str) -> Option<String>;

    /// The value of `key` when it is set and non-empty (how Go's `os.Getenv(k) != ""` checks read).
    fn non_empty(&self, key: &str) -> Option<String> {
        self.var(key).filter(|v| !v.is_empty())
    }

    /// The user's home directory (`$HOME`), where `~/.kube/config` lives.
    fn home_dir(&self) -> Option<PathBuf> {
        self.non_empty("HOME").map(PathBuf::from)
    }

    /// Every variable, for the environment of exec credential plugins (client-go passes
    /// `os.Environ()` on). The default is none, so an implementation that only answers lookups gives
    /// plugins exactly their kubeconfig `env`.
    fn vars(&self) -> Vec<(OsString, OsString)> {
        Vec::new()
    }
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }

    fn vars(&self) -> Vec<(OsString, OsString)> {
        std::env::vars_os().collect()
    }
}

/// A fixed set of variables, for tests and embedding.
#[derive(Debug, Default, Clone)]
pub struct MapEnv(HashMap<String, String>);

impl MapEnv {
    /// An environment holding exactly `vars`.
    pub fn new<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Adds or replaces one variable.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(key.into(), value.into());
        self
    }
}

impl Env for MapEnv {
    fn var(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }

    fn vars(&self) -> Vec<(OsString, OsString)> {
        let mut vars: Vec<_> = self
            .0
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        vars.sort();
        vars
    }
}
