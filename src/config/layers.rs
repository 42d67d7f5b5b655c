//! The layers a [`Settings`] value can come from, highest first: the flags, then the
//! configuration file. The resolvers here pick a setting from the first layer that gives it,
//! check it, and on a bad value name both the setting (`--flag` or `key in FILE`) and the value.
//! What comes after the two layers (nix.conf, the built-in default) is the caller's fallback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::defaults::MAX_SECONDS;
use super::values::absolute;
use super::{ConfigError, Settings};

/// One field of [`Settings`], e.g. `|s| &s.max_size`.
pub type Field<T> = fn(&Settings) -> &Option<T>;

/// A value's parser: takes the text a layer gave and names that text on error.
pub type Parse<T> = fn(&str) -> Result<T, ConfigError>;

/// Where a value came from, to name it in errors and to take relative paths against.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// A command-line flag.
    Flag,
    /// A key of this configuration file.
    File(&'a Path),
}

impl Origin<'_> {
    /// `--key` or `key in FILE`.
    pub fn setting(self, key: &str) -> String {
        match self {
            Origin::Flag => format!("--{key}"),
            Origin::File(path) => format!("{key} in {}", path.display()),
        }
    }

    /// Wraps `err` so it names the setting as well as the value.
    pub fn err(self, key: &str, err: ConfigError) -> ConfigError {
        ConfigError::Setting { setting: self.setting(key), source: Box::new(err) }
    }

    /// `path` as this layer means it: a relative path in the file is taken against the file's
    /// directory; a flag's stays relative to the current directory.
    pub fn path(self, path: &Path) -> PathBuf {
        match self {
            Origin::File(file) => file.parent().map_or_else(|| path.to_owned(), |d| d.join(path)),
            Origin::Flag => path.to_owned(),
        }
    }
}

/// The flags over the configuration file (an empty [`Settings`] when there is none).
#[derive(Debug)]
pub struct Layers<'a> {
    flags: &'a Settings,
    file: &'a Settings,
    file_path: &'a Path,
}

impl<'a> Layers<'a> {
    /// `flags` over `file`, which was read from `file_path`.
    pub fn new(flags: &'a Settings, file: &'a Settings, file_path: &'a Path) -> Self {
        Self { flags, file, file_path }
    }

    /// The configuration file's origin.
    pub fn file_origin(&self) -> Origin<'a> {
        Origin::File(self.file_path)
    }

    /// The first layer's value of `field`, with where it came from.
    pub fn pick<T>(&self, field: Field<T>) -> Option<(&'a T, Origin<'a>)> {
        let flag = field(self.flags).as_ref().map(|v| (v, Origin::Flag));
        flag.or_else(|| field(self.file).as_ref().map(|v| (v, self.file_origin())))
    }

    /// A switch: on when the first layer that gives it says so (a flag can only turn it on).
    pub fn switch(&self, field: Field<bool>) -> bool {
        self.pick(field).is_some_and(|(on, _)| *on)
    }

    /// The first layer's text of `field`, checked by `parse`.
    pub fn parsed<T>(
        &self,
        key: &str,
        field: Field<String>,
        parse: Parse<T>,
    ) -> Result<Option<T>, ConfigError> {
        self.pick(field)
            .map(|(text, origin)| parse(text).map_err(|e| origin.err(key, e)))
            .transpose()
    }

    /// Whole seconds in `min..=MAX_SECONDS`, else `default`.
    pub fn seconds(
        &self,
        key: &str,
        field: Field<u64>,
        min: u64,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match self.pick(field) {
            Some((&secs, _)) if (min..=MAX_SECONDS).contains(&secs) => {
                Ok(Duration::from_secs(secs))
            }
            Some((secs, origin)) => {
                let why =
                    format!("{secs} is out of range: expected {min} to {MAX_SECONDS} seconds");
                Err(origin.err(key, ConfigError::Invalid(why)))
            }
            None => Ok(default),
        }
    }

    /// A count in `0..=max`, where 0 turns the feature off, else `default`.
    pub fn count(
        &self,
        key: &str,
        field: Field<u64>,
        max: u64,
        default: usize,
    ) -> Result<usize, ConfigError> {
        match self.pick(field) {
            Some((&n, origin)) => usize::try_from(n).ok().filter(|_| n <= max).ok_or_else(|| {
                let why = format!("{n} is out of range: expected 0 (off) to {max}");
                origin.err(key, ConfigError::Invalid(why))
            }),
            None => Ok(default),
        }
    }

    /// A path, made absolute (see [`Origin::path`]), else `default`.
    pub fn absolute_path(
        &self,
        field: Field<PathBuf>,
        default: &str,
    ) -> Result<PathBuf, ConfigError> {
        match self.pick(field) {
            Some((path, origin)) => absolute(&origin.path(path)),
            None => absolute(Path::new(default)),
        }
    }

    /// A path, made absolute (see [`Origin::path`]); `None` when no layer gives it.
    pub fn optional_path(&self, field: Field<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
        self.pick(field).map(|(path, origin)| absolute(&origin.path(path))).transpose()
    }

    /// A file that must exist when given, made absolute; `None` when no layer gives it.
    pub fn existing_file(
        &self,
        key: &str,
        field: Field<PathBuf>,
    ) -> Result<Option<PathBuf>, ConfigError> {
        self.pick(field)
            .map(|(path, origin)| existing_file(&origin.path(path), key, origin))
            .transpose()
    }

    /// A list: a flag given at least once replaces the file's list; an empty list in the file
    /// is refused (it would silently mean "none", which no list setting allows).
    pub fn list(
        &self,
        key: &str,
        field: Field<Vec<String>>,
    ) -> Result<Option<(&'a [String], Origin<'a>)>, ConfigError> {
        if let Some(flags) = field(self.flags).as_ref().filter(|l| !l.is_empty()) {
            return Ok(Some((flags, Origin::Flag)));
        }
        match field(self.file) {
            Some(list) if list.is_empty() => Err(self.file_origin().err(
                key,
                ConfigError::Invalid("empty list: name at least one, or remove the key".into()),
            )),
            Some(list) => Ok(Some((list, self.file_origin()))),
            None => Ok(None),
        }
    }
}

/// `path`, made absolute, if it is an existing file (or a link to one); an error otherwise.
pub fn existing_file(path: &Path, key: &str, origin: Origin<'_>) -> Result<PathBuf, ConfigError> {
    let path = absolute(path)?;
    if path.is_file() {
        Ok(path)
    } else {
        let why = format!("{} does not exist or is not a file", path.display());
        Err(origin.err(key, ConfigError::Invalid(why)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/storefs/storefs.toml";

    /// Resolves with `flags` over `file`, read from [`FILE`].
    fn with<T>(flags: Settings, file: Settings, resolve: impl FnOnce(&Layers<'_>) -> T) -> T {
        resolve(&Layers::new(&flags, &file, Path::new(FILE)))
    }

    fn secs(n: u64) -> Settings {
        Settings { connect_timeout: Some(n), ..Settings::default() }
    }

    #[test]
    fn the_flag_wins_over_the_file_and_the_file_over_nothing() {
        let pick = |flags, file| {
            with(flags, file, |l| l.pick(|s| &s.connect_timeout).map(|(v, o)| (*v, o.setting("k"))))
        };
        assert_eq!(pick(secs(1), secs(2)), Some((1, "--k".to_owned())));
        assert_eq!(pick(Settings::default(), secs(2)), Some((2, format!("k in {FILE}"))));
        assert_eq!(pick(Settings::default(), Settings::default()), None);
    }

    #[test]
    fn a_switch_is_on_when_either_layer_turns_it_on() {
        let on = |flag: Option<bool>, file: Option<bool>| {
            let flags = Settings { allow_other: flag, ..Settings::default() };
            let file = Settings { allow_other: file, ..Settings::default() };
            with(flags, file, |l| l.switch(|s| &s.allow_other))
        };
        assert!(!on(None, None));
        assert!(!on(None, Some(false)));
        assert!(on(None, Some(true)));
        assert!(on(Some(true), None));
        assert!(on(Some(true), Some(false)), "a flag can turn on what the file left off");
    }

    #[test]
    fn seconds_are_checked_against_their_range_naming_the_setting() {
        let resolve = |flags, file, min| {
            with(flags, file, |l| {
                l.seconds("connect-timeout", |s| &s.connect_timeout, min, Duration::from_secs(9))
            })
        };
        assert_eq!(resolve(Settings::default(), Settings::default(), 1).unwrap().as_secs(), 9);
        assert_eq!(resolve(secs(0), Settings::default(), 0).unwrap(), Duration::ZERO);
        assert_eq!(resolve(secs(MAX_SECONDS), secs(1), 1).unwrap().as_secs(), MAX_SECONDS);
        let err = resolve(secs(0), Settings::default(), 1).unwrap_err().to_string();
        assert!(err.starts_with("--connect-timeout: 0 is out of range: expected 1 to "), "{err}");
        let err = resolve(Settings::default(), secs(MAX_SECONDS + 1), 1).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("connect-timeout in {FILE}: {}", MAX_SECONDS + 1)),
            "{err}"
        );
    }

    #[test]
    fn a_count_runs_from_zero_to_its_maximum() {
        let jobs = |n| Settings { prefetch_jobs: Some(n), ..Settings::default() };
        let resolve = |flags| {
            with(flags, Settings::default(), |l| {
                l.count("prefetch-jobs", |s| &s.prefetch_jobs, 8, 3)
            })
        };
        assert_eq!(resolve(Settings::default()).unwrap(), 3);
        assert_eq!(resolve(jobs(0)).unwrap(), 0);
        assert_eq!(resolve(jobs(8)).unwrap(), 8);
        let err = resolve(jobs(u64::MAX)).unwrap_err().to_string();
        assert!(err.contains("--prefetch-jobs: 18446744073709551615 is out of range"), "{err}");
    }

    #[test]
    fn parsed_values_name_the_setting_and_the_value() {
        let size = |s: &str| Settings { max_size: Some(s.into()), ..Settings::default() };
        let resolve = |flags, file| {
            with(flags, file, |l| l.parsed("max-size", |s| &s.max_size, super::super::parse_size))
        };
        assert_eq!(resolve(Settings::default(), size("1K")).unwrap(), Some(1024));
        assert_eq!(resolve(Settings::default(), Settings::default()).unwrap(), None);
        let err = resolve(Settings::default(), size("12Q")).unwrap_err().to_string();
        assert!(err.starts_with(&format!("max-size in {FILE}: invalid size \"12Q\"")), "{err}");
    }

    #[test]
    fn relative_paths_are_taken_against_the_layers_directory() {
        let dir = |p: &str| Settings { cache_dir: Some(p.into()), ..Settings::default() };
        let resolve = |flags, file| {
            with(flags, file, |l| l.absolute_path(|s| &s.cache_dir, "/default").unwrap())
        };
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(resolve(dir("c"), dir("f")), cwd.join("c"));
        assert_eq!(resolve(Settings::default(), dir("c")), Path::new("/etc/storefs/c"));
        assert_eq!(resolve(Settings::default(), dir("/abs/c")), Path::new("/abs/c"));
        assert_eq!(resolve(Settings::default(), Settings::default()), Path::new("/default"));
    }

    #[test]
    fn a_list_flag_replaces_the_files_list_and_an_empty_file_list_is_refused() {
        let subs = |l: &[&str]| Settings {
            substituters: Some(l.iter().map(|s| (*s).to_owned()).collect()),
            ..Settings::default()
        };
        let resolve = |flags, file| {
            with(flags, file, |l| {
                l.list("substituters", |s| &s.substituters)
                    .map(|list| list.map(|(v, o)| (v.to_vec(), o.setting("substituters"))))
            })
        };
        let (list, from) = resolve(subs(&["f"]), subs(&["a", "b"])).unwrap().unwrap();
        assert_eq!((list, from), (vec!["f".to_owned()], "--substituters".to_owned()));
        let (list, _) = resolve(subs(&[]), subs(&["a"])).unwrap().unwrap();
        assert_eq!(list, ["a"], "no flag given: the file's list");
        assert!(resolve(Settings::default(), Settings::default()).unwrap().is_none());
        let err = resolve(Settings::default(), subs(&[])).unwrap_err().to_string();
        assert!(err.starts_with(&format!("substituters in {FILE}: empty list")), "{err}");
    }

    #[test]
    fn an_existing_file_must_exist() {
        let netrc = |p: &str| Settings { netrc_file: Some(p.into()), ..Settings::default() };
        let resolve = |flags| {
            with(flags, Settings::default(), |l| l.existing_file("netrc-file", |s| &s.netrc_file))
        };
        let here = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        assert_eq!(resolve(netrc(here)).unwrap(), Some(PathBuf::from(here)));
        assert_eq!(resolve(Settings::default()).unwrap(), None);
        let err = resolve(netrc("/nonexistent/netrc")).unwrap_err().to_string();
        assert_eq!(err, "--netrc-file: /nonexistent/netrc does not exist or is not a file");
    }
}
