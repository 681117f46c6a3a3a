//! The files a configuration was loaded from, and content hashes that tell when they changed: what hot
//! reload polls.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::base::env::Env;
use crate::kube::kubeconfig::{self, LoadOptions, PemSource, ResolvedConfig, Source};

/// The kubeconfig files a load of `opts` may read (existing or not), in precedence order.
fn kubeconfig_candidates(opts: &LoadOptions, env: &dyn Env) -> Vec<PathBuf> {
    match kubeconfig::kubeconfig_files(opts, env) {
        Ok(candidates) => candidates.into_iter().map(|(p, _)| p).collect(),
        // `--kubeconfig` naming a missing file: watch for it to come back.
        Err(_) => opts.kubeconfig.iter().cloned().collect(),
    }
}

/// Content hashes of files taken *before* a configuration was loaded from them, so that a change made
/// while or just after they were read is noticed at the next check instead of becoming the baseline.
#[derive(Debug, Clone, Default)]
pub struct Baseline(Vec<(PathBuf, u64)>);

impl Baseline {
    /// Hashes what loading `opts` may read: the kubeconfig candidates and the in-cluster files. Call it
    /// right before loading.
    pub fn before_load(opts: &LoadOptions, env: &dyn Env) -> Baseline {
        let mut files = kubeconfig_candidates(opts, env);
        let dir = kubeconfig::incluster_dir(opts, env);
        files.extend(["token", "ca.crt", "namespace"].map(|n| dir.join(n)));
        Baseline(files.iter().map(|p| (p.clone(), hash_file(p))).collect())
    }

    /// A baseline of hashes already taken.
    pub(crate) fn from_hashes(hashes: Vec<(PathBuf, u64)>) -> Baseline {
        Baseline(hashes)
    }

    /// The hashes to compare `files` with: the baseline's for files it has, fresh ones for the rest
    /// (files named only by the loaded configuration, such as a client certificate).
    pub(crate) fn hashes_for(&self, files: &[PathBuf]) -> Vec<u64> {
        files
            .iter()
            .map(|p| match self.0.iter().find(|(f, _)| f == p) {
                Some((_, h)) => *h,
                None => hash_file(p),
            })
            .collect()
    }
}

/// The files a configuration was loaded from (`cluster`, loaded with `load` in `env`), whose change
/// triggers a reload.
pub fn watched_files(load: &LoadOptions, env: &dyn Env, cluster: &ResolvedConfig) -> Vec<PathBuf> {
    let mut files = kubeconfig_candidates(load, env);
    if let Source::InCluster { dir } = &cluster.source {
        for name in ["token", "ca.crt", "namespace"] {
            files.push(dir.join(name));
        }
    }
    for pem in [
        &cluster.tls.ca,
        &cluster.tls.client_cert,
        &cluster.tls.client_key,
    ]
    .into_iter()
    .flatten()
    {
        if let PemSource::File(p) = pem {
            files.push(p.clone());
        }
    }
    files.extend(cluster.auth.token_file.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    files.retain(|p| seen.insert(p.clone()));
    files
}

/// A hash per file of its contents (or of why it cannot be read: missing, unreadable). Symlinks are
/// followed, so a kubelet `..data` swap shows up as new content.
pub fn fingerprint(files: &[PathBuf]) -> Vec<u64> {
    files.iter().map(|p| hash_file(p)).collect()
}

fn hash_file(path: &Path) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match std::fs::read(path) {
        Ok(bytes) => {
            0u8.hash(&mut h);
            bytes.hash(&mut h);
        }
        Err(e) => {
            1u8.hash(&mut h);
            (e.kind() as u32).hash(&mut h);
        }
    }
    h.finish()
}
