//! Applies the user's identity to an upstream request with client-go's precedence: a client-sent
//! `Authorization` is forwarded untouched (kubeconfig credentials are skipped), and configured
//! impersonation is skipped when the client sent its own `Impersonate-User`; otherwise configured groups
//! are added to any the client sent.

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

pub mod credentials;

use crate::auth::credentials::{CredentialError, Credentials, Used};
use crate::kube::kubeconfig::Impersonation;

static IMPERSONATE_USER: HeaderName = HeaderName::from_static("impersonate-user");
static IMPERSONATE_UID: HeaderName = HeaderName::from_static("impersonate-uid");
static IMPERSONATE_GROUP: HeaderName = HeaderName::from_static("impersonate-group");

/// The identity kproxy adds to proxied requests.
#[derive(Debug)]
pub struct Auth {
    /// Where `Authorization` comes from.
    pub credentials: Credentials,
    /// Pre-built impersonation headers, in the order client-go writes them.
    impersonation: Vec<(HeaderName, HeaderValue)>,
}

/// An impersonation value that cannot be sent as a header.
#[derive(Debug, thiserror::Error)]
#[error("impersonation {0} contains characters not allowed in an HTTP header")]
pub struct InvalidImpersonation(&'static str);

impl Auth {
    /// Combines a credential source with the configured impersonation.
    pub fn new(
        credentials: Credentials,
        imp: &Impersonation,
    ) -> Result<Self, InvalidImpersonation> {
        let mut headers = Vec::new();
        if let Some(user) = &imp.user {
            let value =
                |v: &str, what| HeaderValue::from_str(v).map_err(|_| InvalidImpersonation(what));
            headers.push((IMPERSONATE_USER.clone(), value(user, "user")?));
            if let Some(uid) = &imp.uid {
                headers.push((IMPERSONATE_UID.clone(), value(uid, "uid")?));
            }
            for g in &imp.groups {
                headers.push((IMPERSONATE_GROUP.clone(), value(g, "group")?));
            }
            for (key, values) in &imp.extra {
                let name = HeaderName::from_bytes(
                    format!("impersonate-extra-{}", escape_extra_key(key)).as_bytes(),
                )
                .map_err(|_| InvalidImpersonation("user-extra key"))?;
                for v in values {
                    headers.push((name.clone(), value(v, "user-extra value")?));
                }
            }
        }
        Ok(Self {
            credentials,
            impersonation: headers,
        })
    }

    /// Adds credentials and impersonation to `headers`. Returns the credential kproxy supplied, if any
    /// (so a 401 says something about our credential rather than the client's): the `Authorization` it
    /// added, or an exec plugin's client certificate when the client sent no `Authorization`.
    pub async fn apply(&self, headers: &mut HeaderMap) -> Result<Option<Used>, CredentialError> {
        // client-go tests `len(req.Header.Get(name)) != 0`: an empty header counts as absent, and then
        // `Set` replaces it.
        let present = |h: &HeaderMap, name: &HeaderName| h.get(name).is_some_and(|v| !v.is_empty());
        let mut used = None;
        if !present(headers, &AUTHORIZATION) {
            if let Some(c) = self.credentials.current().await? {
                match c.authorization {
                    Some(v) => {
                        headers.insert(AUTHORIZATION, v);
                        used = Some(c.used);
                    }
                    None if self.credentials.may_be_certificate() => used = Some(c.used),
                    None => {}
                }
            }
        }
        if !self.impersonation.is_empty() && !present(headers, &IMPERSONATE_USER) {
            for (name, value) in &self.impersonation {
                // client-go `Set`s the user and uid (replacing what the client sent) and `Add`s groups
                // and extras to the client's.
                if *name == IMPERSONATE_USER || *name == IMPERSONATE_UID {
                    headers.insert(name.clone(), value.clone());
                } else {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        Ok(used)
    }
}

/// client-go's `headerKeyEscape`: bytes that are not HTTP token characters, and `%`, become `%XX`, so any
/// extra key survives the trip through a header name.
fn escape_extra_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        let token = b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b);
        if token {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_keys_are_escaped() {
        assert_eq!(escape_extra_key("scopes"), "scopes");
        assert_eq!(
            escape_extra_key("example.com/foo bar%"),
            "example.com%2Ffoo%20bar%25"
        );
    }
}
