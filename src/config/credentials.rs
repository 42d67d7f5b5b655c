//! Credentials for the substituters: the netrc file (which falls through to nix.conf's
//! `netrc-file` and Nix's default, as Nix does) and one bearer token file per substituter.

use std::path::{Path, PathBuf};

use super::layers::{Layers, Origin, existing_file};
use super::{ConfigError, NixConf, TokenFile};

/// `--netrc-file`, else the file's `netrc-file` (either must exist), else nix.conf's
/// `netrc-file`, else `default`; the last two only if the file exists, as in Nix.
pub fn netrc_file(
    layers: &Layers<'_>,
    nix_conf: &NixConf,
    default: &Path,
) -> Result<Option<PathBuf>, ConfigError> {
    Ok(match layers.existing_file("netrc-file", |s| &s.netrc_file)? {
        Some(path) => Some(path),
        // Nix's rule: nix.conf's setting replaces the default, and a missing file means no
        // credentials rather than an error.
        None => Some(nix_conf.netrc_file.as_deref().unwrap_or(default).to_owned())
            .filter(|p| p.is_file()),
    })
}

/// `--bearer-token-file` values, else the file's `bearer-token-files` table, as
/// `(substituter, token file)`: each URL a substituter (spelled as configured), named once; each
/// file existing and absolute.
pub fn bearer_token_files(
    layers: &Layers<'_>,
    substituters: &[String],
) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    let Some((given, origin)) = layers.pick(|s| &s.bearer_token_files) else {
        return Ok(Vec::new());
    };
    let key = match origin {
        Origin::Flag => "bearer-token-file",
        Origin::File(_) => "bearer-token-files",
    };
    // Every typed value is split before any is checked, so a malformed one is reported first.
    let pairs = given
        .iter()
        .map(|token| match token {
            TokenFile::Typed(value) => split_typed(value, substituters).ok_or_else(|| {
                origin.err(key, invalid(format!("invalid value {value:?}: expected URL=FILE")))
            }),
            TokenFile::Entry(url, path) => Ok((url.as_str(), path.as_path())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: Vec<(String, PathBuf)> = Vec::with_capacity(pairs.len());
    for (url, path) in pairs {
        let Some(sub) = find_substituter(url, substituters) else {
            let why =
                format!("{url:?} is not one of the substituters ({})", substituters.join(", "));
            return Err(origin.err(key, invalid(why)));
        };
        if out.iter().any(|(u, _)| u == sub) {
            return Err(origin.err(key, invalid(format!("{url:?} has more than one token file"))));
        }
        let path = origin.path(path);
        if path.as_os_str().is_empty() {
            return Err(origin.err(key, invalid(format!("no token file given for {url:?}"))));
        }
        out.push((sub.clone(), existing_file(&path, key, origin)?));
    }
    Ok(out)
}

fn invalid(why: String) -> ConfigError {
    ConfigError::Invalid(why)
}

/// The substituter `url` names, compared without a trailing `/`, spelled as configured.
fn find_substituter<'a>(url: &str, substituters: &'a [String]) -> Option<&'a String> {
    substituters.iter().find(|s| s.trim_end_matches('/') == url.trim_end_matches('/'))
}

/// Splits a typed `URL=FILE`. A substituter URL may itself contain `=`, so a configured
/// substituter followed by `=` is looked for first, then the first `=`.
fn split_typed<'v>(value: &'v str, substituters: &[String]) -> Option<(&'v str, &'v Path)> {
    let known = substituters.iter().find_map(|s| {
        let url = s.trim_end_matches('/');
        let rest = value.strip_prefix(url)?;
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        Some((&value[..url.len()], rest.strip_prefix('=')?))
    });
    let (url, file) = known.or_else(|| value.split_once('='))?;
    Some((url, Path::new(file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_value_splits_after_the_substituter_it_names() {
        let subs = ["https://a/x=y/".to_owned(), "https://b".to_owned()];
        for (typed, want) in [
            ("https://a/x=y=/t", Some(("https://a/x=y", "/t"))),
            ("https://a/x=y/=/t", Some(("https://a/x=y", "/t"))),
            ("https://b=/t=u", Some(("https://b", "/t=u"))),
            ("https://c=/t", Some(("https://c", "/t"))),
            ("https://b=", Some(("https://b", ""))),
            ("https://b", None),
        ] {
            let got = split_typed(typed, &subs).map(|(u, f)| (u, f.to_str().unwrap()));
            assert_eq!(got, want, "{typed}");
        }
    }

    #[test]
    fn substituters_match_without_their_trailing_slash() {
        let subs = ["https://a/".to_owned(), "https://b".to_owned()];
        assert_eq!(find_substituter("https://a", &subs), Some(&subs[0]));
        assert_eq!(find_substituter("https://b/", &subs), Some(&subs[1]));
        assert_eq!(find_substituter("https://c", &subs), None);
    }
}
