//! Reading layers from their sources: the YAML file, the `FLUIDITY_*` environment map, and writing flags back
//! (`--save`). Also where a merged value came from ([`Provenance`]), for error messages.
//!
//! The environment is always a map passed in by the caller; nothing here reads or changes the process environment.
//! Values are only checked for their type here; ranges and cross-key rules are `resolve`'s job.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use yaml_serde::{Mapping, Value};

use super::ConfigError;
use super::layers::{Layer, is_list_key};

/// The environment variable that sets `key`: `FLUIDITY_` + the key in upper case.
pub(crate) fn env_var_name(key: &str) -> String {
    format!("FLUIDITY_{}", key.to_ascii_uppercase())
}

/// The command-line flag that sets `key`: `--` + the key in kebab case.
pub(crate) fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// Reads a layer from a YAML file. Relative paths in it are resolved against the file's folder.
///
/// An empty file (or one with only comments) is an empty layer.
///
/// # Errors
/// [`ConfigError::Read`] if the file cannot be read, otherwise as [`parse_file_layer`].
pub(crate) fn read_file_layer<L: Layer>(path: &Path) -> Result<L, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        file: path.to_owned(),
        error,
    })?;
    let mut layer: L = parse_file_layer(&text, path)?;
    let base = path.parent().unwrap_or_else(|| Path::new(""));
    layer.resolve_paths(base);
    Ok(layer)
}

/// Parses YAML text into a layer; `file` only names the source in errors.
///
/// # Errors
/// [`ConfigError::Yaml`] for a syntax error or a value of the wrong type (with serde's key, line and column),
/// [`ConfigError::NotAMapping`] if the top level is not a mapping, [`ConfigError::UnknownKey`] for a key the layer
/// does not have (with the nearest valid key).
pub(crate) fn parse_file_layer<L: Layer>(text: &str, file: &Path) -> Result<L, ConfigError> {
    let yaml_error = |error| ConfigError::Yaml {
        file: file.to_owned(),
        error,
    };
    // First untyped, to report unknown keys with a suggestion rather than serde's list of every field.
    let mapping = match yaml_serde::from_str::<Value>(text).map_err(yaml_error)? {
        Value::Null => return Ok(L::default()),
        Value::Mapping(mapping) => mapping,
        _ => {
            return Err(ConfigError::NotAMapping {
                file: file.to_owned(),
            });
        }
    };
    for key in mapping.keys() {
        match key.as_str() {
            Some(k) if L::KEYS.contains(&k) => {}
            _ => {
                let key = render_key(key);
                return Err(ConfigError::UnknownKey {
                    file: file.to_owned(),
                    suggestion: nearest_key(&key, L::KEYS).map(str::to_owned),
                    key,
                    valid: L::KEYS.join(", "),
                });
            }
        }
    }
    // Then typed from the text, so type errors keep their line and column.
    yaml_serde::from_str(text).map_err(yaml_error)
}

/// A mapping key as the user wrote it, for messages.
fn render_key(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => yaml_serde::to_string(other)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// Builds a layer from `FLUIDITY_<KEY>` entries of `env`.
///
/// Each value is read as a YAML scalar (`8443` is a number, `true` a boolean), falling back to the plain string, so
/// a numeric host name or password still works. List keys are split on ','; `[]` is the empty list. Empty values
/// count as unset.
///
/// # Errors
/// [`ConfigError::Env`] naming the variable when its value does not fit the key's type.
pub(crate) fn env_layer<L: Layer>(env: &HashMap<String, String>) -> Result<L, ConfigError> {
    let mut layer = L::default();
    for &key in L::KEYS {
        let var = env_var_name(key);
        let Some(raw) = env.get(&var) else { continue };
        if raw.trim().is_empty() {
            continue;
        }
        let candidates = if is_list_key::<L>(key) && raw.trim() == "[]" {
            vec![Value::Sequence(Vec::new())]
        } else if is_list_key::<L>(key) {
            let items = raw
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_owned()))
                .collect();
            vec![Value::Sequence(items)]
        } else {
            scalar_candidates(raw)
        };
        let mut first_error = None;
        let mut parsed = None;
        for candidate in candidates {
            let mut single = Mapping::new();
            single.insert(Value::String(key.to_owned()), candidate);
            match yaml_serde::from_value::<L>(Value::Mapping(single)) {
                Ok(one) => {
                    parsed = Some(one);
                    break;
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match (parsed, first_error) {
            (Some(one), _) => layer = one.or(layer),
            (None, Some(error)) => return Err(ConfigError::Env { var, error }),
            (None, None) => {}
        }
    }
    Ok(layer)
}

/// The YAML readings of an environment value to try, in order: a bool or number if it reads as one, then the
/// verbatim string (never a mapping, list or null: `a: b` or `~` in a variable are meant literally).
fn scalar_candidates(raw: &str) -> Vec<Value> {
    let verbatim = Value::String(raw.to_owned());
    match yaml_serde::from_str::<Value>(raw) {
        Ok(typed @ (Value::Bool(_) | Value::Number(_))) => vec![typed, verbatim],
        _ => vec![verbatim],
    }
}

/// The valid key closest to `key` by edit distance, if it is close enough to be a plausible typo.
pub(crate) fn nearest_key<'k>(key: &str, valid: &[&'k str]) -> Option<&'k str> {
    let key = key.to_ascii_lowercase();
    valid
        .iter()
        .map(|&candidate| (edit_distance(&key, candidate), candidate))
        .min_by_key(|&(distance, _)| distance)
        .filter(|&(distance, candidate)| distance <= (candidate.len() / 3).max(2))
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// Where a merged value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A command-line flag, `--key`.
    Flag(String),
    /// An environment variable, `FLUIDITY_KEY`.
    Env(String),
    /// The YAML file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(flag) => f.write_str(flag),
            Self::Env(var) => f.write_str(var),
            Self::File(file) => write!(f, "{}", file.display()),
            Self::Default => f.write_str("default"),
        }
    }
}

/// The set keys of each layer, to say where a merged value came from.
pub(crate) struct Provenance {
    cli: Mapping,
    env: Mapping,
    file: Mapping,
    file_path: Option<PathBuf>,
    file_name: &'static str,
}

impl Provenance {
    pub(crate) fn new<L: Layer>(cli: &L, env: &L, file: &L, file_path: Option<&Path>) -> Self {
        Self {
            cli: set_keys(cli),
            env: set_keys(env),
            file: set_keys(file),
            file_path: file_path.map(Path::to_owned),
            file_name: L::FILE_NAME,
        }
    }

    /// The highest-precedence layer that sets `key`.
    pub(crate) fn of(&self, key: &str) -> Source {
        if self.cli.contains_key(key) {
            Source::Flag(flag_name(key))
        } else if self.env.contains_key(key) {
            Source::Env(env_var_name(key))
        } else if self.file.contains_key(key) {
            Source::File(self.file_path.clone().unwrap_or_default())
        } else {
            Source::Default
        }
    }

    /// The error for a key no layer set.
    pub(crate) fn missing(&self, key: &'static str) -> ConfigError {
        let file = self
            .file_path
            .as_ref()
            .map_or_else(|| self.file_name.to_owned(), |p| p.display().to_string());
        ConfigError::Missing { key, file }
    }

    /// An error for `key`'s merged value, naming where it came from.
    pub(crate) fn invalid(&self, key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            from: self.of(key).to_string(),
            key,
            message: message.into(),
        }
    }
}

/// The keys a layer sets (serialization skips `None`).
fn set_keys<L: Layer>(layer: &L) -> Mapping {
    match yaml_serde::to_value(layer) {
        Ok(Value::Mapping(mapping)) => mapping,
        _ => Mapping::new(),
    }
}

/// Sets the keys of `layer` in the YAML file `file` (created if missing), keeping every other key and the order.
///
/// # Errors
/// [`ConfigError::Read`]/[`ConfigError::Write`] for I/O failures, [`ConfigError::Yaml`] or
/// [`ConfigError::NotAMapping`] if the existing file is not a YAML mapping.
pub(crate) fn save_layer<L: Layer>(file: &Path, layer: &L) -> Result<(), ConfigError> {
    /// Writes `bytes` to a new file beside `file` and renames it over `file`, so a crash leaves the old config or
    /// the new one, never half of one (a rename is atomic only within one file system, hence the same folder).
    /// The new file takes the old one's permissions before the first byte is written, so an agent.yaml at 0600
    /// holding `proxy_auth` is never readable by others, not even for a moment; a new file gets 0600, as it may
    /// hold that password.
    fn replace_file(file: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write as _;
        let existing = match std::fs::metadata(file) {
            Ok(metadata) => Some(metadata),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        let (temporary, mut out) = create_beside(file)?;
        let written = keep_access(&out, existing.as_ref())
            .and_then(|()| out.write_all(bytes))
            .and_then(|()| out.sync_all())
            .and_then(|()| {
                drop(out);
                std::fs::rename(&temporary, file)
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
    }

    /// A new, empty file of our own in `file`'s folder, readable and writable by its owner only.
    fn create_beside(file: &Path) -> io::Result<(PathBuf, std::fs::File)> {
        let name = file
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut attempt = 0u32;
        loop {
            let mut temporary = std::ffi::OsString::from(".");
            temporary.push(name);
            temporary.push(format!(".{}-{attempt}.tmp", std::process::id()));
            let temporary = file.with_file_name(temporary);
            match options.open(&temporary) {
                Ok(out) => return Ok((temporary, out)),
                // Left by a crashed run with the same process id: take the next name.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Gives `out` the permissions of the file it replaces, and its owner and group where the process may set
    /// them (root may set both, an owner a group it belongs to); otherwise it stays the process's own.
    #[cfg(unix)]
    fn keep_access(out: &std::fs::File, existing: Option<&std::fs::Metadata>) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let Some(existing) = existing else {
            return Ok(());
        };
        // Owner first: changing it may clear set-id bits, which the mode below puts back.
        if std::os::unix::fs::fchown(out, Some(existing.uid()), Some(existing.gid())).is_err() {
            let _ = std::os::unix::fs::fchown(out, None, Some(existing.gid()));
        }
        out.set_permissions(existing.permissions())
    }

    /// Elsewhere there are no modes to keep: the new file gets the folder's access rules.
    #[cfg(not(unix))]
    fn keep_access(_out: &std::fs::File, _existing: Option<&std::fs::Metadata>) -> io::Result<()> {
        Ok(())
    }

    let mut document = match std::fs::read_to_string(file) {
        Ok(text) => match yaml_serde::from_str::<Value>(&text) {
            Ok(Value::Null) => Mapping::new(),
            Ok(Value::Mapping(mapping)) => mapping,
            Ok(_) => {
                return Err(ConfigError::NotAMapping {
                    file: file.to_owned(),
                });
            }
            Err(error) => {
                return Err(ConfigError::Yaml {
                    file: file.to_owned(),
                    error,
                });
            }
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => Mapping::new(),
        Err(error) => {
            return Err(ConfigError::Read {
                file: file.to_owned(),
                error,
            });
        }
    };
    let write_error = |error: yaml_serde::Error| ConfigError::Write {
        file: file.to_owned(),
        error: io::Error::other(error.to_string()),
    };
    if let Value::Mapping(updates) = yaml_serde::to_value(layer).map_err(write_error)? {
        for (key, value) in updates {
            // An existing key keeps its position; a new one goes at the end.
            document.insert(key, value);
        }
    }
    let text = yaml_serde::to_string(&document).map_err(write_error)?;
    replace_file(file, text.as_bytes()).map_err(|error| ConfigError::Write {
        file: file.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentLayer, LogFormat, ServerLayer};

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn env_parses_ints_bools_strings_and_enums() {
        let layer: AgentLayer = env_layer(&env(&[
            ("FLUIDITY_SERVER_IP", "10.1.2.3"),
            ("FLUIDITY_SERVER_PORT", "9443"),
            ("FLUIDITY_FAST_CONNECT", "true"),
            ("FLUIDITY_TUNNELS", "2"),
            ("FLUIDITY_ALLOW_OPEN_PROXY", "false"),
            ("FLUIDITY_LISTEN_ADDR", "::1"),
            ("FLUIDITY_LOG_FORMAT", "json"),
            ("FLUIDITY_LOG_LEVEL", "fluidity=debug,h2=warn"),
            ("FLUIDITY_PROXY_AUTH", "1234:5678"),
            ("FLUIDITY_CERT_FILE", "rel/c.crt"),
            ("FLUIDITY_KEY_FILE", ""),
            ("SERVER_PORT", "1"),
        ]))
        .expect("valid env");
        assert_eq!(layer.server_ip, Some(vec!["10.1.2.3".to_owned()]));
        assert_eq!(layer.server_port, Some(9443));
        assert_eq!(layer.fast_connect, Some(true));
        assert_eq!(layer.tunnels, Some(2));
        assert_eq!(layer.allow_open_proxy, Some(false));
        assert_eq!(layer.listen_addr, Some("::1".parse().expect("ip")));
        assert_eq!(layer.log_format, Some(LogFormat::Json));
        assert_eq!(layer.log_level.as_deref(), Some("fluidity=debug,h2=warn"));
        let auth = layer.proxy_auth.expect("auth");
        assert_eq!((auth.user(), auth.password()), ("1234", "5678"));
        // Env paths stay relative to the current directory; empty values are unset.
        assert_eq!(layer.cert_file, Some(PathBuf::from("rel/c.crt")));
        assert_eq!(layer.key_file, None);
        assert_eq!(layer.local_proxy_port, None);
    }

    #[test]
    fn env_numeric_host_name_stays_a_string() {
        let layer: AgentLayer =
            env_layer(&env(&[("FLUIDITY_SERVER_IP", "1234")])).expect("valid env");
        assert_eq!(layer.server_ip, Some(vec!["1234".to_owned()]));
    }

    #[test]
    fn env_lists_split_on_commas() {
        let layer: ServerLayer = env_layer(&env(&[
            ("FLUIDITY_DENY_TARGETS", "10.0.0.0/8, *.internal,,:25"),
            ("FLUIDITY_ALLOW_TARGETS", "only.example"),
        ]))
        .expect("valid env");
        assert_eq!(
            layer.deny_targets,
            Some(vec!["10.0.0.0/8".into(), "*.internal".into(), ":25".into()])
        );
        assert_eq!(layer.allow_targets, Some(vec!["only.example".into()]));
    }

    #[test]
    fn env_list_of_brackets_is_the_empty_list_and_an_empty_value_is_unset() {
        let layer: AgentLayer =
            env_layer(&env(&[("FLUIDITY_DIRECT_TARGETS", " [] ")])).expect("valid env");
        assert_eq!(layer.direct_targets, Some(Vec::new()));
        let layer: AgentLayer =
            env_layer(&env(&[("FLUIDITY_DIRECT_TARGETS", "")])).expect("valid env");
        assert_eq!(layer.direct_targets, None);
    }

    #[test]
    fn env_bad_value_names_the_variable() {
        for (var, value) in [
            ("FLUIDITY_SERVER_PORT", "abc"),
            ("FLUIDITY_SERVER_PORT", "70000"),
            ("FLUIDITY_FAST_CONNECT", "maybe"),
            ("FLUIDITY_LISTEN_ADDR", "localhost"),
            ("FLUIDITY_PROXY_AUTH", "nocolon"),
        ] {
            let err = env_layer::<AgentLayer>(&env(&[(var, value)])).expect_err(value);
            let message = err.to_string();
            assert!(message.starts_with(&format!("{var}: ")), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
        let err = env_layer::<AgentLayer>(&env(&[("FLUIDITY_SERVER_PORT", "abc")]))
            .expect_err("not a number");
        assert!(err.to_string().contains("u16"), "{err}");
    }

    #[test]
    fn unknown_key_suggests_the_nearest() {
        let err = parse_file_layer::<ServerLayer>(
            "listen_port: 1\nlisten_prot: 2\n",
            Path::new("server.yaml"),
        )
        .expect_err("typo");
        assert_eq!(
            err.to_string(),
            "server.yaml: unknown key `listen_prot` (did you mean `listen_port`?)"
        );
        let err = parse_file_layer::<AgentLayer>("server-port: 1\n", Path::new("agent.yaml"))
            .expect_err("dashes");
        assert!(
            err.to_string().contains("did you mean `server_port`?"),
            "{err}"
        );
        let err = parse_file_layer::<AgentLayer>("colour: blue\n", Path::new("agent.yaml"))
            .expect_err("unrelated");
        let message = err.to_string();
        assert!(message.starts_with("agent.yaml: unknown key `colour` (valid keys: server_ip, "));
        assert!(!message.contains("did you mean"));
    }

    #[test]
    fn nearest_key_thresholds() {
        let keys = AgentLayer::KEYS;
        assert_eq!(nearest_key("server_prot", keys), Some("server_port"));
        assert_eq!(nearest_key("SERVER_IP", keys), Some("server_ip"));
        assert_eq!(nearest_key("logformat", keys), Some("log_format"));
        assert_eq!(nearest_key("x", keys), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn wrong_type_names_the_key_file_and_line() {
        let err = parse_file_layer::<AgentLayer>(
            "server_ip: example.net\nserver_port: abc\n",
            Path::new("agent.yaml"),
        )
        .expect_err("wrong type");
        let message = err.to_string();
        assert!(
            message
                .starts_with("agent.yaml: server_port: invalid type: string \"abc\", expected u16"),
            "{message}"
        );
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn bad_proxy_auth_names_the_key_without_the_value() {
        let err = parse_file_layer::<AgentLayer>(
            "server_ip: a\nproxy_auth: secretwithoutcolon\n",
            Path::new("agent.yaml"),
        )
        .expect_err("no colon");
        let message = err.to_string();
        assert!(
            message.starts_with("agent.yaml: proxy_auth: expected \"user:password\""),
            "{message}"
        );
        assert!(message.contains("line 2"), "{message}");
        assert!(!message.contains("secretwithoutcolon"), "{message}");
    }

    #[test]
    fn syntax_errors_keep_the_location() {
        let err =
            parse_file_layer::<AgentLayer>("server_ip: a\n  bad: [\n", Path::new("agent.yaml"))
                .expect_err("bad yaml");
        let ConfigError::Yaml { error, .. } = &err else {
            panic!("expected a YAML error, got {err}");
        };
        assert!(error.location().is_some());
        assert!(err.to_string().contains("line"), "{err}");
        let err = parse_file_layer::<AgentLayer>("- a\n- b\n", Path::new("agent.yaml"))
            .expect_err("a list");
        assert!(matches!(err, ConfigError::NotAMapping { .. }));
    }

    #[test]
    fn empty_text_is_an_empty_layer() {
        for text in ["", "\n", "# only a comment\n", "---\n"] {
            let layer = parse_file_layer::<AgentLayer>(text, Path::new("agent.yaml"))
                .expect("empty is fine");
            assert_eq!(layer, AgentLayer::default());
        }
    }

    #[test]
    fn file_paths_resolve_against_the_file_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        std::fs::write(
            &file,
            "cert_file: certs/a.crt\nkey_file: /abs/a.key\nca_cert_file: ../ca.crt\n",
        )
        .expect("write");
        let layer: AgentLayer = read_file_layer(&file).expect("valid");
        assert_eq!(layer.cert_file, Some(dir.path().join("certs/a.crt")));
        assert_eq!(layer.key_file, Some(PathBuf::from("/abs/a.key")));
        assert_eq!(layer.ca_cert_file, Some(dir.path().join("../ca.crt")));
        // A bare file name in the current directory keeps relative paths as written.
        let layer: AgentLayer =
            parse_file_layer("cert_file: a.crt\n", Path::new("agent.yaml")).expect("valid");
        assert_eq!(layer.cert_file, Some(PathBuf::from("a.crt")));
    }

    #[test]
    fn provenance_names_the_highest_layer() {
        let cli = AgentLayer {
            server_port: Some(1),
            ..AgentLayer::default()
        };
        let env = AgentLayer {
            server_port: Some(2),
            log_level: Some("x".into()),
            ..AgentLayer::default()
        };
        let file = AgentLayer {
            server_ip: Some(vec!["h".into()]),
            ..AgentLayer::default()
        };
        let provenance = Provenance::new(&cli, &env, &file, Some(Path::new("conf/agent.yaml")));
        assert_eq!(provenance.of("server_port").to_string(), "--server-port");
        assert_eq!(provenance.of("log_level").to_string(), "FLUIDITY_LOG_LEVEL");
        assert_eq!(provenance.of("server_ip").to_string(), "conf/agent.yaml");
        assert_eq!(provenance.of("fast_connect"), Source::Default);
    }

    #[test]
    fn save_keeps_other_keys_and_their_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        std::fs::write(
            &file,
            "# comment (lost)\nlog_level: debug\nserver_ip: old.example\ncustom_note: kept\nserver_port: 1\n",
        )
        .expect("write");
        let layer = AgentLayer {
            server_ip: Some(vec!["new.example".into()]),
            local_proxy_port: Some(9090),
            ..AgentLayer::default()
        };
        save_layer(&file, &layer).expect("saved");
        let text = std::fs::read_to_string(&file).expect("read");
        assert_eq!(
            text,
            "log_level: debug\nserver_ip: new.example\ncustom_note: kept\nserver_port: 1\nlocal_proxy_port: 9090\n"
        );
    }

    #[test]
    fn save_creates_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("new.yaml");
        let layer = ServerLayer {
            listen_port: Some(9443),
            deny_targets: Some(vec!["10.0.0.0/8".into()]),
            ..ServerLayer::default()
        };
        save_layer(&file, &layer).expect("saved");
        let back: ServerLayer =
            parse_file_layer(&std::fs::read_to_string(&file).expect("read"), &file).expect("valid");
        assert_eq!(back, layer);
    }

    #[test]
    fn save_refuses_a_non_mapping_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, "- a\n").expect("write");
        let err = save_layer(&file, &AgentLayer::default()).expect_err("not a mapping");
        assert!(matches!(err, ConfigError::NotAMapping { .. }));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "- a\n");
    }
}
