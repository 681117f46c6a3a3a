//! One kubeconfig file read as client-go reads it, so that kproxy starts on exactly the files
//! `kubectl proxy` starts on and rejects the rest for kubectl's reason. `kube`'s own reader differs:
//! it merges every YAML document (client-go reads the first and ignores the rest, even a broken one),
//! requires a `name` on every entry (client-go's is an optional string), rejects a repeated mapping key
//! (Go's YAML keeps the last), and coerces numbers into strings (Go's JSON decoding refuses them).
//! Here the text is decoded (UTF-8, or UTF-16 with a byte-order mark as PowerShell writes it), its
//! first document parsed to a JSON value, checked and completed the way client-go's decoding does,
//! and only then handed to `kube`'s types.

use std::path::Path;

use kube::config::Kubeconfig;
use serde_json::Value;

/// Parses the kubeconfig `bytes` read from `path`; relative file references are made absolute against
/// the file's directory, as client-go does. The error is a message naming the problem, never the
/// file's text (which may hold secrets).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Kubeconfig, String> {
    let text = decode(bytes)?;
    let doc = first_document(&text);
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::LastWins;
    // YAML 1.2 booleans only: a context named `y` or `on` is a name (as kubectl reads it), not `true`.
    options.strict_booleans = true;
    let mut value: Value = if doc.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str_with_options(doc, options)
            .map_err(|e| e.without_snippet().to_string())?
    };
    if value.is_null() {
        return Ok(Kubeconfig::default());
    }
    let Value::Object(top) = &mut value else {
        return Err("the file is not a YAML mapping".to_owned());
    };
    check_kind(top)?;
    for list in LISTS {
        name_nameless(top, list.0);
    }
    // client-go's order: the typed decoding (types, then the base64 of `*-data` fields, which Go's JSON
    // decodes into []byte) fails first; the conversion to name-keyed maps (duplicate names) after.
    let mut kc: Kubeconfig =
        serde_json::from_value(value.clone()).map_err(|e| locate(&value, e))?;
    check_data(&kc)?;
    for (list, go_type) in LISTS {
        check_unique(&value, list, go_type)?;
    }
    if let Some(dir) = path.parent() {
        absolute_paths(&mut kc, dir);
    }
    Ok(kc)
}

/// UTF-8 (a byte-order mark skipped), or UTF-16 with a byte-order mark.
fn decode(bytes: &[u8]) -> Result<String, String> {
    let utf16 = |rest: &[u8], le: bool| {
        if rest.len() % 2 != 0 {
            return Err("invalid UTF-16: an odd number of bytes".to_owned());
        }
        let units: Vec<u16> = rest
            .chunks(2)
            .map(|c| {
                if le {
                    u16::from_le_bytes([c[0], c[1]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        String::from_utf16(&units).map_err(|_| "invalid UTF-16".to_owned())
    };
    match bytes {
        [0xFF, 0xFE, rest @ ..] => utf16(rest, true),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, false),
        [0xEF, 0xBB, 0xBF, rest @ ..] => {
            String::from_utf8(rest.to_vec()).map_err(|_| "invalid UTF-8".to_owned())
        }
        _ => String::from_utf8(bytes.to_vec()).map_err(|_| "invalid UTF-8".to_owned()),
    }
}

/// The first YAML document: client-go's decoder (sigs.k8s.io/yaml) reads one document and ignores
/// what follows a `---` or `...` marker.
fn first_document(text: &str) -> &str {
    let mut start = 0;
    let mut seen_content = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker =
            bare == "---" || bare.starts_with("--- ") || bare == "..." || bare.starts_with("... ");
        if marker {
            if seen_content {
                return &text[start..offset];
            }
            if bare.starts_with("---") {
                // A leading `---` opens the first document; a value may follow it on the line.
                start = offset + 3;
            }
        } else if !bare.trim().is_empty() && !bare.trim_start().starts_with('#') {
            seen_content = true;
        }
        offset += line.len();
    }
    &text[start..]
}

/// `kind` and `apiVersion`, when set, must be client-go's (`Config`, `v1`).
fn check_kind(top: &serde_json::Map<String, Value>) -> Result<(), String> {
    let field = |name: &str| match top.get(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{name} must be a string")),
    };
    let (kind, version) = (field("kind")?, field("apiVersion")?);
    let kind_shown = if kind.is_empty() { "Config" } else { &kind };
    let version_shown = if version.is_empty() { "v1" } else { &version };
    if (!kind.is_empty() && kind != "Config") || (!version.is_empty() && version != "v1") {
        return Err(format!(
            "no kind {kind_shown:?} is registered for version {version_shown:?}: a kubeconfig is kind Config, apiVersion v1"
        ));
    }
    Ok(())
}

/// The lists client-go converts into maps keyed by name, with the Go type named in its error.
const LISTS: [(&str, &str); 3] = [
    ("clusters", "NamedCluster"),
    ("users", "NamedAuthInfo"),
    ("contexts", "NamedContext"),
];

/// Gives nameless entries client-go's empty name (`name` is an optional string there); a `null`
/// entry is Go's zero value, an entry with an empty name and nothing else.
fn name_nameless(top: &mut serde_json::Map<String, Value>, list: &str) {
    let Some(Value::Array(entries)) = top.get_mut(list) else {
        return;
    };
    for entry in entries.iter_mut() {
        if entry.is_null() {
            *entry = Value::Object(serde_json::Map::new());
        }
        if let Value::Object(map) = entry {
            if matches!(map.get("name"), None | Some(Value::Null)) {
                map.insert("name".to_owned(), Value::String(String::new()));
            }
        }
    }
}

/// Rejects a name used twice in one list, as client-go's conversion to its name-keyed maps does.
fn check_unique(value: &Value, list: &str, go_type: &str) -> Result<(), String> {
    let Some(Value::Array(entries)) = value.get(list) else {
        return Ok(());
    };
    let mut names = std::collections::HashSet::new();
    for name in entries.iter().filter_map(|e| e.get("name")?.as_str()) {
        if !names.insert(name) {
            return Err(format!(
                "error converting *[]{go_type} into a map: duplicate name {:?} in list {list}",
                crate::base::echo::bounded(name)
            ));
        }
    }
    Ok(())
}

/// Every `*-data` field, used or not, must be base64: Go's JSON decoding of `[]byte` refuses the whole
/// file otherwise (`illegal base64 data at input byte N`). Go's decoder skips line breaks; so does this.
fn check_data(kc: &Kubeconfig) -> Result<(), String> {
    use secrecy::ExposeSecret as _;
    let clusters = kc.clusters.iter().filter_map(|c| {
        let data = c.cluster.as_ref()?.certificate_authority_data.as_deref()?;
        Some(("certificate-authority-data", "cluster", &c.name, data))
    });
    let users = kc.auth_infos.iter().flat_map(|u| {
        let info = u.auth_info.as_ref();
        [
            (
                "client-certificate-data",
                info.and_then(|i| i.client_certificate_data.as_deref()),
            ),
            (
                "client-key-data",
                info.and_then(|i| i.client_key_data.as_ref().map(|k| k.expose_secret())),
            ),
        ]
        .into_iter()
        .filter_map(move |(field, data)| Some((field, "user", &u.name, data?)))
    });
    for (field, kind, name, data) in clusters.chain(users) {
        if let Err(why) = decode_data(data) {
            return Err(format!(
                "illegal base64 data in {field} of {kind} {:?}: {why}",
                crate::base::echo::bounded(name),
            ));
        }
    }
    Ok(())
}

/// Decodes a `*-data` field as Go's JSON decoding of `[]byte` does (standard base64, line breaks
/// skipped). The error names a position and a symbol class, never the data: a key may be there.
pub(crate) fn decode_data(data: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let compact: String = data.split(['\r', '\n']).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| redact_b64(&e))
}

/// A base64 error without the offending byte (it may be part of a private key).
fn redact_b64(e: &base64::DecodeError) -> String {
    match e {
        base64::DecodeError::InvalidByte(at, _) => format!("invalid symbol at input byte {at}"),
        base64::DecodeError::InvalidLength(_) => "invalid length".to_owned(),
        base64::DecodeError::InvalidLastSymbol(at, _) => {
            format!("invalid last symbol at input byte {at}")
        }
        base64::DecodeError::InvalidPadding => "invalid padding".to_owned(),
    }
}

/// Says where a typed decoding error is: the entry of `clusters`, `users` or `contexts` whose
/// decoding fails, or the top level. String values are never quoted (they may be secrets).
fn locate(value: &Value, err: serde_json::Error) -> String {
    use kube::config::{AuthInfo, Cluster, Context};
    fn fails<T: serde::de::DeserializeOwned>(v: &Value) -> Option<String> {
        serde_json::from_value::<T>(v.clone())
            .err()
            .map(|e| e.to_string())
    }
    type Check = fn(&Value) -> Option<String>;
    let checks: [(&str, &str, Check); 3] = [
        ("clusters", "cluster", fails::<Cluster>),
        ("users", "user", fails::<AuthInfo>),
        ("contexts", "context", fails::<Context>),
    ];
    let mut found = None;
    for (list, field, check) in checks {
        if let Some(Value::Array(entries)) = value.get(list) {
            for (i, entry) in entries.iter().enumerate() {
                if let Some(inner) = entry.get(field) {
                    if let Some(e) = check(inner) {
                        found = Some(format!("{list}[{i}].{field}: {e}"));
                        break;
                    }
                }
            }
        }
        if found.is_some() {
            break;
        }
    }
    redact(&found.unwrap_or_else(|| err.to_string()))
}

/// Removes quoted string values from a serde message (`invalid type: string "…"`).
fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i + "string".len()]);
        let after = &rest[i + "string \"".len()..];
        match after.find('"') {
            Some(j) => rest = &after[j + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// client-go resolves relative file references against the file's directory.
fn absolute_paths(kc: &mut Kubeconfig, dir: &Path) {
    let abs = |p: &mut Option<String>| {
        if let Some(s) = p {
            if Path::new(s.as_str()).is_relative() && !s.is_empty() {
                if let Some(joined) = dir.join(s.as_str()).to_str() {
                    *s = joined.to_owned();
                }
            }
        }
    };
    for named in &mut kc.clusters {
        if let Some(cluster) = &mut named.cluster {
            abs(&mut cluster.certificate_authority);
        }
    }
    for named in &mut kc.auth_infos {
        if let Some(user) = &mut named.auth_info {
            abs(&mut user.client_certificate);
            abs(&mut user.client_key);
            abs(&mut user.token_file);
            if let Some(exec) = &mut user.exec {
                if exec
                    .command
                    .as_deref()
                    .is_some_and(|c| c.contains(std::path::MAIN_SEPARATOR))
                {
                    abs(&mut exec.command);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_document_only() {
        assert_eq!(first_document("a: 1\n---\nb: [\n"), "a: 1\n");
        assert_eq!(first_document("---\na: 1\n---\nb: 2\n"), "\na: 1\n");
        assert_eq!(first_document("# c\n---\na: 1\n"), "\na: 1\n");
        assert_eq!(first_document("a: 1\n...\nb\n"), "a: 1\n");
        assert_eq!(first_document("a: |\n  ---x\n"), "a: |\n  ---x\n");
    }

    #[test]
    fn redacts_string_values() {
        assert_eq!(
            redact(r#"invalid type: string "s3cret", expected a boolean"#),
            "invalid type: string, expected a boolean"
        );
    }
}
