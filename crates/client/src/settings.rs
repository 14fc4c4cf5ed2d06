//! Cluster settings: named instance files (`NAME.conf`, §9.2) and `ARVADOS_*`
//! environment variables. Parsing does no I/O; [`ClusterSettings::load`] reads one file.
//!
//! File format: `KEY=VALUE` lines. Blank lines and `#` comments are allowed (the Go
//! keep-rsync panics on them, §9.2), `\r` is stripped, whitespace around key and value
//! is trimmed, quotes are *not* removed (neither Go nor Python does). A non-empty,
//! non-comment line without `=` is an error naming the file and line. Unknown keys are
//! ignored, as in Go. Error messages never show a line's content, since a line without
//! `=` may be a pasted token.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::signing::{SigningKey, Token};

/// What a settings file or the environment says about one cluster.
///
/// `Debug` is safe to print: [`Token`] and [`SigningKey`] redact themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `ARVADOS_API_HOST`: `host` or `host:port`, no scheme (always https, §7.1).
    pub api_host: Option<String>,
    /// `ARVADOS_API_TOKEN`.
    pub api_token: Option<Token>,
    /// `ARVADOS_API_HOST_INSECURE`: skip TLS certificate checks (API and https Keep
    /// services). Default false.
    pub insecure: bool,
    /// `ARVADOS_BLOB_SIGNING_KEY` (files only; keep-rsync reads it from the source).
    pub blob_signing_key: Option<SigningKey>,
    /// `ARVADOS_KEEP_SERVICES`: whitespace-separated Keep service URLs that replace
    /// discovery (§8.2); see [`from_keep_services_env`](crate::services::from_keep_services_env).
    pub keep_services: Option<String>,
    /// The file these settings came from (`None` for the environment).
    pub path: Option<PathBuf>,
}

/// Truth values for `ARVADOS_API_HOST_INSECURE` (Python `flag_is_true`, a superset
/// of Go's `StringBool`, §7.1); compared case-insensitively.
const TRUE_WORDS: [&str; 5] = ["1", "t", "true", "y", "yes"];
/// Accepted false values. Anything else is an error rather than a silent "false".
const FALSE_WORDS: [&str; 5] = ["0", "f", "false", "n", "no"];

fn parse_bool(value: &str) -> Option<bool> {
    if value.is_empty() {
        return Some(false);
    }
    let v = value.to_ascii_lowercase();
    if TRUE_WORDS.contains(&v.as_str()) {
        Some(true)
    } else if FALSE_WORDS.contains(&v.as_str()) {
        Some(false)
    } else {
        None
    }
}

impl ClusterSettings {
    /// Loads a named instance file, searching as arv-copy does, or a path.
    ///
    /// - `name_or_path` containing `/` is a literal path.
    /// - Otherwise it is a NAME, looked up as `NAME.conf` in
    ///   `$XDG_CONFIG_HOME/arvados/` (default `$HOME/.config/arvados/`), then in
    ///   `<dir>/arvados/` for each dir of `$XDG_CONFIG_DIRS` (default `/etc/xdg`).
    ///   A NAME that already ends in `.conf` is looked up as is (no `x.conf.conf`);
    ///   to read `./x.conf` from the current directory, write the `./`.
    ///
    /// # Errors
    /// [`Error::Settings`] when the file is not found (listing where it looked), cannot
    /// be read, or is malformed.
    pub fn load(name_or_path: &str) -> Result<ClusterSettings> {
        Self::load_with_env(name_or_path, &|k| std::env::var_os(k))
    }

    /// [`ClusterSettings::load`] with the environment given as a function (for tests,
    /// which run in parallel and must not change the process environment).
    ///
    /// # Errors
    /// As for [`ClusterSettings::load`].
    pub fn load_with_env(
        name_or_path: &str,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<ClusterSettings> {
        let candidates = Self::candidate_paths(name_or_path, env);
        let not_found = |path: PathBuf| Error::Settings {
            path,
            line: None,
            message: "no such file".into(),
        };
        if name_or_path.contains('/') {
            let path = PathBuf::from(name_or_path);
            return match std::fs::read_to_string(&path) {
                Ok(text) => Self::parse(&text, &path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_found(path)),
                Err(e) => Err(Error::Settings {
                    path,
                    line: None,
                    message: format!("cannot read: {e}"),
                }),
            };
        }
        for path in &candidates {
            match std::fs::read_to_string(path) {
                Ok(text) => return Self::parse(&text, path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::Settings {
                        path: path.clone(),
                        line: None,
                        message: format!("cannot read: {e}"),
                    });
                }
            }
        }
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Err(Error::Settings {
            path: PathBuf::from(name_or_path),
            line: None,
            message: format!(
                "no settings file for cluster {name_or_path:?}; looked in: {}",
                if looked.is_empty() {
                    "(nowhere: HOME and XDG_CONFIG_HOME are unset)".to_owned()
                } else {
                    looked.join(", ")
                }
            ),
        })
    }

    /// The files [`ClusterSettings::load`] tries, in order, for `name_or_path`.
    pub fn candidate_paths(
        name_or_path: &str,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Vec<PathBuf> {
        if name_or_path.contains('/') {
            return vec![PathBuf::from(name_or_path)];
        }
        let file = if name_or_path.ends_with(".conf") {
            name_or_path.to_owned()
        } else {
            format!("{name_or_path}.conf")
        };
        let non_empty = |k: &str| env(k).filter(|v| !v.is_empty());
        let mut out = Vec::new();
        // The XDG spec says relative paths in these variables are invalid and ignored.
        let home_cfg = non_empty("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| non_empty("HOME").map(|h| Path::new(&h).join(".config")));
        if let Some(dir) = home_cfg {
            out.push(dir.join("arvados").join(&file));
        }
        let dirs = non_empty("XDG_CONFIG_DIRS").unwrap_or_else(|| OsString::from("/etc/xdg"));
        for dir in std::env::split_paths(&dirs) {
            if dir.is_absolute() {
                out.push(dir.join("arvados").join(&file));
            }
        }
        out
    }

    /// Parses settings-file text; `path` is recorded and used in error messages.
    ///
    /// # Errors
    /// [`Error::Settings`] naming the file and line for a line without `=`, an empty
    /// key, or a bad `ARVADOS_API_HOST_INSECURE` value.
    pub fn parse(text: &str, path: &Path) -> Result<ClusterSettings> {
        let mut s = ClusterSettings {
            path: Some(path.to_owned()),
            ..Default::default()
        };
        let err = |line: usize, message: String| Error::Settings {
            path: path.to_owned(),
            line: Some(line),
            message,
        };
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(
                    n,
                    "expected KEY=VALUE (or a # comment); the line has no '='".into(),
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(err(n, "empty key before '='".into()));
            }
            s.set(key, value).map_err(|m| err(n, m))?;
        }
        Ok(s)
    }

    /// Reads `ARVADOS_API_HOST`, `ARVADOS_API_TOKEN`, `ARVADOS_API_HOST_INSECURE` and
    /// `ARVADOS_KEEP_SERVICES` from the process environment. Empty variables count as
    /// unset.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad `ARVADOS_API_HOST_INSECURE` value or a variable
    /// that is not UTF-8.
    pub fn from_env() -> Result<ClusterSettings> {
        Self::from_env_with(&|k| std::env::var_os(k))
    }

    /// [`ClusterSettings::from_env`] with the environment given as a function.
    ///
    /// # Errors
    /// As for [`ClusterSettings::from_env`].
    pub fn from_env_with(env: &dyn Fn(&str) -> Option<OsString>) -> Result<ClusterSettings> {
        let mut s = ClusterSettings::default();
        for key in [
            "ARVADOS_API_HOST",
            "ARVADOS_API_TOKEN",
            "ARVADOS_API_HOST_INSECURE",
            "ARVADOS_KEEP_SERVICES",
        ] {
            let Some(v) = env(key) else { continue };
            let v = v
                .into_string()
                .map_err(|_| Error::Config(format!("environment variable {key} is not UTF-8")))?;
            s.set(key, v.trim())
                .map_err(|m| Error::Config(format!("environment: {m}")))?;
        }
        Ok(s)
    }

    /// Applies one `KEY=VALUE`. The error message never contains the value of a
    /// secret key.
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let opt = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        match key {
            "ARVADOS_API_HOST" => self.api_host = opt(value),
            "ARVADOS_API_TOKEN" => self.api_token = opt(value).map(Token::new),
            "ARVADOS_BLOB_SIGNING_KEY" => self.blob_signing_key = opt(value).map(SigningKey::new),
            "ARVADOS_KEEP_SERVICES" => self.keep_services = opt(value),
            "ARVADOS_API_HOST_INSECURE" => {
                self.insecure = parse_bool(value).ok_or_else(|| {
                    let shown: String = value.chars().take(20).collect();
                    format!(
                        "ARVADOS_API_HOST_INSECURE must be one of 1, t, true, y, yes or 0, f, false, n, no (any case); got {shown:?}"
                    )
                })?;
            }
            // Unknown keys are ignored, as in Go; their values are never shown.
            _ => {}
        }
        Ok(())
    }

    /// Whether the file these settings came from holds a signing key and can be read
    /// by group or others (mode & 0o044), so that a CLI can warn. Always false for
    /// settings without a key or a file, and on non-unix systems.
    pub fn signing_key_readable_by_others(&self) -> bool {
        self.blob_signing_key.is_some() && self.secrets_readable_by_others()
    }

    /// Whether the file holds a secret (a token or a signing key) and other users can
    /// read it (group or world read bit).
    pub fn secrets_readable_by_others(&self) -> bool {
        if self.api_token.is_none() && self.blob_signing_key.is_none() {
            return false;
        }
        self.path.as_deref().is_some_and(readable_by_others)
    }
}

/// Whether other users than the owner can read `path` (group or world read bit).
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

impl ClusterSettings {
    /// The API host and token, which most uses require.
    ///
    /// # Errors
    /// [`Error::Settings`] (or [`Error::Config`] for the environment) naming the
    /// missing key.
    pub fn require_api(&self) -> Result<(&str, &Token)> {
        let missing = |key: &str| match &self.path {
            Some(path) => Error::Settings {
                path: path.clone(),
                line: None,
                message: format!("{key} is not set"),
            },
            None => Error::Config(format!("{key} is not set")),
        };
        let host = self
            .api_host
            .as_deref()
            .ok_or_else(|| missing("ARVADOS_API_HOST"))?;
        let token = self
            .api_token
            .as_ref()
            .ok_or_else(|| missing("ARVADOS_API_TOKEN"))?;
        Ok((host, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str =
        "v2/zzzzz-gj3su-077z32aux8dg2s1/3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi";

    #[test]
    fn parses_keys_comments_crlf() {
        let text = format!(
            "# a comment\r\n\r\n  ARVADOS_API_HOST = zzzzz.example.com:8443 \r\nARVADOS_API_TOKEN={TOKEN}\r\n   # indented comment\nARVADOS_API_HOST_INSECURE=Yes\nARVADOS_BLOB_SIGNING_KEY=abc\nSOMETHING_ELSE=whatever\nARVADOS_UNKNOWN=x=y\n"
        );
        let s = ClusterSettings::parse(&text, Path::new("/t/a.conf")).unwrap();
        assert_eq!(s.api_host.as_deref(), Some("zzzzz.example.com:8443"));
        assert_eq!(s.api_token.as_ref().unwrap().expose(), TOKEN);
        assert!(s.insecure);
        assert_eq!(s.blob_signing_key, Some(SigningKey::new("abc")));
        assert_eq!(s.path.as_deref(), Some(Path::new("/t/a.conf")));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("3kg6k6") && !dbg.contains("abc\""), "{dbg}");
    }

    #[test]
    fn insecure_values() {
        for (v, want) in [
            ("1", true),
            ("t", true),
            ("TRUE", true),
            ("y", true),
            ("yes", true),
            ("0", false),
            ("f", false),
            ("False", false),
            ("n", false),
            ("no", false),
            ("", false),
        ] {
            let s = ClusterSettings::parse(
                &format!("ARVADOS_API_HOST_INSECURE={v}"),
                Path::new("x.conf"),
            )
            .unwrap();
            assert_eq!(s.insecure, want, "{v:?}");
        }
        let e = ClusterSettings::parse(
            "\nARVADOS_API_HOST_INSECURE=maybe\n",
            Path::new("/t/x.conf"),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/t/x.conf:2: "), "{msg}");
        assert!(msg.contains("maybe"), "{msg}");
    }

    #[test]
    fn missing_equals_names_line_without_content() {
        let e = ClusterSettings::parse(
            "ARVADOS_API_HOST=h\n\nsekrit-token\n",
            Path::new("/t/y.conf"),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/t/y.conf:3: "), "{msg}");
        assert!(!msg.contains("sekrit"), "{msg}");
        assert!(matches!(e, Error::Settings { line: Some(3), .. }));
        let e = ClusterSettings::parse("=x", Path::new("z")).unwrap_err();
        assert!(e.to_string().contains("empty key"));
    }

    #[test]
    fn candidates_follow_xdg() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let e = env(&[("HOME", "/home/u")]);
        assert_eq!(
            ClusterSettings::candidate_paths("src", &e),
            [
                PathBuf::from("/home/u/.config/arvados/src.conf"),
                PathBuf::from("/etc/xdg/arvados/src.conf")
            ]
        );
        let e = env(&[
            ("HOME", "/home/u"),
            ("XDG_CONFIG_HOME", "/cfg"),
            ("XDG_CONFIG_DIRS", "/a:relative:/b"),
        ]);
        assert_eq!(
            ClusterSettings::candidate_paths("dst.conf", &e),
            [
                PathBuf::from("/cfg/arvados/dst.conf"),
                PathBuf::from("/a/arvados/dst.conf"),
                PathBuf::from("/b/arvados/dst.conf")
            ]
        );
        assert_eq!(
            ClusterSettings::candidate_paths("./x.conf", &e),
            [PathBuf::from("./x.conf")]
        );
    }

    #[test]
    fn env_settings() {
        let vars = [
            ("ARVADOS_API_HOST", "h:1"),
            ("ARVADOS_API_TOKEN", TOKEN),
            ("ARVADOS_API_HOST_INSECURE", "1"),
            ("ARVADOS_KEEP_SERVICES", "http://a:1 http://b:2/"),
            ("ARVADOS_BLOB_SIGNING_KEY", "ignored-from-env"),
        ];
        let s = ClusterSettings::from_env_with(&|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        })
        .unwrap();
        assert_eq!(s.api_host.as_deref(), Some("h:1"));
        assert!(s.insecure);
        assert!(s.blob_signing_key.is_none());
        assert_eq!(s.keep_services.as_deref(), Some("http://a:1 http://b:2/"));
        assert!(s.require_api().is_ok());
        let e = ClusterSettings::default().require_api().unwrap_err();
        assert!(e.to_string().contains("ARVADOS_API_HOST"));
    }
}
