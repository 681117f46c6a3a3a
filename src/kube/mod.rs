//! What the kubeconfig (or the pod's service account) says, made usable: the resolved cluster, user and
//! context, and the rustls configuration built from it.

pub mod kubeconfig;
pub mod kubeconfig_file;
pub mod tls;
