//! Credentials for private caches: a netrc file (HTTP Basic, matched by host, as Nix's
//! `netrc-file` does for Cachix and attic, which take a token as the password) and bearer tokens
//! read from files, one per substituter URL.
//!
//! Credentials go only to the cache's own origin: each request carries them explicitly, and the
//! HTTP client drops `Authorization` when a redirect leads to another host, port or scheme.

use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::Url;

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The netrc file does not parse.
    #[error("{path}: {reason}")]
    Netrc {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the token.
        reason: String,
    },
    /// A bearer-token file holds no token.
    #[error("bearer token file {path} is empty")]
    EmptyToken {
        /// The file.
        path: PathBuf,
    },
}

/// What a request to one cache carries.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Basic base64(login:password)`.
    Basic {
        /// User name.
        login: String,
        /// Password (or token).
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    // Secrets never reach a log line, even at trace level.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { login, .. } => write!(f, "Basic({login}:<redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Adds the `Authorization` header (marked sensitive) to `req`.
    pub fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Credentials::Basic { login, password } => req.basic_auth(login, Some(password)),
            Credentials::Bearer(token) => req.bearer_auth(token),
        }
    }

    /// How the credentials are sent, for logs: `basic` or `bearer`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Credentials::Basic { .. } => "basic",
            Credentials::Bearer(_) => "bearer",
        }
    }
}

/// One `machine` (or `default`) entry of a netrc file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NetrcEntry {
    /// `None` for the `default` entry.
    machine: Option<String>,
    login: String,
    password: String,
}

/// A parsed netrc file (the subset curl reads: `machine`, `default`, `login`, `password`;
/// `account` is ignored and `macdef` bodies are skipped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Netrc {
    entries: Vec<NetrcEntry>,
}

impl Netrc {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AuthError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|reason| AuthError::Netrc { path: path.into(), reason })
    }

    /// Parses netrc text: whitespace-separated tokens; `#` starts a comment line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let mut in_macdef = false;
        for line in text.lines() {
            if in_macdef {
                // A macro body runs to the next empty line.
                in_macdef = !line.trim().is_empty();
                continue;
            }
            if line.trim_start().starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(at) = words.iter().position(|w| *w == "macdef") {
                tokens.extend_from_slice(&words[..at]);
                in_macdef = true;
                continue;
            }
            tokens.extend(words);
        }
        let mut entries: Vec<NetrcEntry> = Vec::new();
        let mut it = tokens.into_iter();
        while let Some(token) = it.next() {
            let mut value = |what: &str| {
                it.next().map(str::to_owned).ok_or_else(|| format!("{what} without a value"))
            };
            match token {
                "machine" => entries
                    .push(NetrcEntry { machine: Some(value("machine")?), ..Default::default() }),
                "default" => entries.push(NetrcEntry::default()),
                "login" | "password" | "account" => {
                    let v = value(token)?;
                    let entry = entries
                        .last_mut()
                        .ok_or_else(|| format!("{token} before any machine or default"))?;
                    match token {
                        "login" => entry.login = v,
                        "password" => entry.password = v,
                        _ => {}
                    }
                }
                other => return Err(format!("unexpected token {other:?}")),
            }
        }
        Ok(Self { entries })
    }

    /// Basic credentials for `host`: the first `machine` with that name (case-insensitive),
    /// else the `default` entry, as curl does. The port plays no part.
    pub fn for_host(&self, host: &str) -> Option<Credentials> {
        let named = self
            .entries
            .iter()
            .find(|e| e.machine.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(host)));
        let entry = named.or_else(|| self.entries.iter().find(|e| e.machine.is_none()))?;
        Some(Credentials::Basic { login: entry.login.clone(), password: entry.password.clone() })
    }
}

/// Reads a bearer token: the file's content without surrounding whitespace.
pub fn read_bearer_token(path: &Path) -> Result<String, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| AuthError::Read { path: path.into(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AuthError::EmptyToken { path: path.into() });
    }
    Ok(token.to_owned())
}

/// Every credential source, loaded once at start-up (before mounting).
#[derive(Clone, Debug, Default)]
pub struct AuthSources {
    netrc: Option<Netrc>,
    /// (substituter URL without trailing `/`, token).
    bearer: Vec<(String, String)>,
}

impl AuthSources {
    /// Loads the netrc file (if any) and each `(substituter URL, token file)`.
    pub fn load(
        netrc_file: Option<&Path>,
        bearer_token_files: &[(String, PathBuf)],
    ) -> Result<Self, AuthError> {
        let netrc = netrc_file.map(Netrc::read).transpose()?;
        let bearer = bearer_token_files
            .iter()
            .map(|(url, path)| Ok((normalise(url).to_owned(), read_bearer_token(path)?)))
            .collect::<Result<_, AuthError>>()?;
        Ok(Self { netrc, bearer })
    }

    /// Built from values in memory (tests).
    pub fn new(netrc: Option<Netrc>, bearer: Vec<(String, String)>) -> Self {
        let bearer = bearer.into_iter().map(|(u, t)| (normalise(&u).to_owned(), t)).collect();
        Self { netrc, bearer }
    }

    /// What requests to the cache at `base_url` carry: its bearer token if one is configured for
    /// exactly this substituter URL, else the netrc entry for its host, else nothing.
    pub fn credentials_for(&self, base_url: &str) -> Option<Credentials> {
        let key = normalise(base_url);
        if let Some((_, token)) = self.bearer.iter().find(|(url, _)| url == key) {
            return Some(Credentials::Bearer(token.clone()));
        }
        let host = Url::parse(base_url).ok()?.host_str()?.to_owned();
        self.netrc.as_ref()?.for_host(&host)
    }

    /// Substituter URLs a bearer token was given for, for checking against the substituters.
    pub fn bearer_urls(&self) -> impl Iterator<Item = &str> {
        self.bearer.iter().map(|(url, _)| url.as_str())
    }
}

fn normalise(url: &str) -> &str {
    url.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(login: &str, password: &str) -> Option<Credentials> {
        Some(Credentials::Basic { login: login.into(), password: password.into() })
    }

    #[test]
    fn netrc_matches_machines_by_host_then_default() {
        let netrc = Netrc::parse(
            "# private caches\nmachine cache.example.org login alice password s3cret\n\
             machine ATTIC.example.org\n  login bob\n  account x\n  password tok\n\
             default login anon password guest\n",
        )
        .unwrap();
        assert_eq!(netrc.for_host("cache.example.org"), basic("alice", "s3cret"));
        assert_eq!(netrc.for_host("attic.example.org"), basic("bob", "tok"));
        assert_eq!(netrc.for_host("other.example.org"), basic("anon", "guest"));
    }

    #[test]
    fn netrc_without_default_has_nothing_for_unknown_hosts() {
        let netrc = Netrc::parse("machine a login x password y").unwrap();
        assert_eq!(netrc.for_host("b"), None);
        assert_eq!(netrc.for_host("a"), basic("x", "y"));
    }

    #[test]
    fn netrc_skips_macdef_bodies() {
        let netrc =
            Netrc::parse("macdef init\ncd /pub\nget x\n\nmachine h login l password p\n").unwrap();
        assert_eq!(netrc.for_host("h"), basic("l", "p"));
    }

    #[test]
    fn netrc_errors_name_the_token() {
        for (text, want) in [
            ("login x", "login before any machine"),
            ("machine h login", "login without a value"),
            ("machine h user x", "\"user\""),
        ] {
            let err = Netrc::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn bearer_tokens_win_for_their_substituter_only() {
        let netrc = Netrc::parse("machine cache.example.org login u password p").unwrap();
        let auth = AuthSources::new(
            Some(netrc),
            vec![("https://cache.example.org/private/".into(), "tok".into())],
        );
        assert_eq!(
            auth.credentials_for("https://cache.example.org/private"),
            Some(Credentials::Bearer("tok".into()))
        );
        assert_eq!(auth.credentials_for("https://cache.example.org/other"), basic("u", "p"));
        assert_eq!(auth.credentials_for("https://elsewhere.example.org"), None);
    }

    #[test]
    fn reads_token_files_trimmed_and_refuses_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (good, empty) = (dir.path().join("good"), dir.path().join("empty"));
        std::fs::write(&good, "  abc.def\n").unwrap();
        std::fs::write(&empty, "\n").unwrap();
        assert_eq!(read_bearer_token(&good).unwrap(), "abc.def");
        assert!(matches!(read_bearer_token(&empty), Err(AuthError::EmptyToken { .. })));
        let missing = read_bearer_token(&dir.path().join("missing")).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let shown =
            format!("{:?} {:?}", basic("u", "pw").unwrap(), Credentials::Bearer("t0k".into()));
        assert!(!shown.contains("pw") && !shown.contains("t0k"), "{shown}");
    }
}
