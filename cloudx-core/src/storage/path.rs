//! The rules every file path in a project obeys, checked once, here.
//!
//! A path is relative (`src/main.rs`), UTF-8 in Unicode normal form C, made of `/`-separated
//! segments that are neither empty, `.` nor `..`, with no NUL or other control character, each
//! segment at most 255 bytes and the whole at most 1024 bytes: what every file system a project
//! is pulled onto can hold, and nothing that can climb out of a folder.

use std::fmt;

use unicode_normalization::UnicodeNormalization as _;

use crate::error::{Error, Result};

/// The longest segment, in bytes (what ext4, APFS and NTFS hold).
pub const MAX_SEGMENT_BYTES: usize = 255;
/// The longest path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// A checked, normalised path of a file in a project.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProjectPath(String);

impl ProjectPath {
    /// Checks `raw` against the path rules and returns it in normal form C.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming the rule broken.
    pub fn parse(raw: &str) -> Result<Self> {
        check(raw, false).map(ProjectPath)
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment: the file's name.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Every folder that holds this path, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(|(i, _)| &self.0[..i])
    }

    /// This path under `folder` (`folder` may be the root).
    pub fn join_under(folder: &Folder, rest: &ProjectPath) -> Result<ProjectPath> {
        if folder.is_root() { Ok(rest.clone()) } else { ProjectPath::parse(&format!("{}/{}", folder.0, rest.0)) }
    }

    /// This path with `from` (a folder holding it) replaced by `to`.
    pub fn rebase(&self, from: &ProjectPath, to: &ProjectPath) -> Result<ProjectPath> {
        match self.0.strip_prefix(from.as_str()) {
            Some("") => Ok(to.clone()),
            Some(rest) if rest.starts_with('/') => ProjectPath::parse(&format!("{}{rest}", to.0)),
            _ => Err(Error::invalid(format!("path: `{self}` is not under `{from}`"))),
        }
    }
}

impl fmt::Display for ProjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ProjectPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A folder of a project: the root (empty) or a path, written with or without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Folder(String);

impl Folder {
    /// The whole project.
    pub fn root() -> Self {
        Folder(String::new())
    }

    /// Checks a folder name: empty or `/` for the root, otherwise a path with at most one
    /// trailing `/`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) naming the rule broken.
    pub fn parse(raw: &str) -> Result<Self> {
        let trimmed = raw.strip_suffix('/').unwrap_or(raw);
        if trimmed.is_empty() {
            return Ok(Self::root());
        }
        check(trimmed, true).map(Folder)
    }

    /// Whether this is the whole project.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The folder as text, without a trailing `/` (empty for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` lies inside this folder.
    pub fn contains(&self, path: &str) -> bool {
        self.is_root() || path.strip_prefix(self.0.as_str()).is_some_and(|rest| rest.starts_with('/'))
    }

    /// The part of `path` below this folder (`path` must lie inside it).
    pub fn relative<'p>(&self, path: &'p str) -> &'p str {
        if self.is_root() { path } else { &path[self.0.len() + 1..] }
    }

    /// The SQL bounds of the paths inside this folder: `path >= lo AND path < hi`, by bytes
    /// (`/` + 1 is `0`).
    pub(crate) fn bounds(&self) -> Option<(String, String)> {
        (!self.is_root()).then(|| (format!("{}/", self.0), format!("{}0", self.0)))
    }
}

impl From<ProjectPath> for Folder {
    fn from(path: ProjectPath) -> Self {
        Folder(path.0)
    }
}

impl fmt::Display for Folder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() { f.write_str("/") } else { f.write_str(&self.0) }
    }
}

fn check(raw: &str, folder: bool) -> Result<String> {
    let what = if folder { "folder" } else { "path" };
    let bad = |rule: &str| Err(Error::invalid(format!("{what} `{}`: {rule}", shown(raw))));
    if raw.is_empty() {
        return bad("is empty; name a file such as `src/main.rs`");
    }
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return bad(&format!(
            "contains the control character U+{:04X}; paths hold printable characters only",
            c as u32
        ));
    }
    if raw.starts_with('/') {
        return bad("starts with `/`; paths are relative to the project (`src/main.rs`)");
    }
    let normal: String = raw.nfc().collect();
    if normal.len() > MAX_PATH_BYTES {
        return bad(&format!("is {} bytes long; the limit is {MAX_PATH_BYTES}", normal.len()));
    }
    for segment in normal.split('/') {
        match segment {
            "" => return bad("has an empty segment (`//` or a trailing `/`)"),
            "." => return bad("has a `.` segment; write the path without it"),
            ".." => return bad("has a `..` segment; a path cannot leave its project"),
            s if s.len() > MAX_SEGMENT_BYTES => {
                return bad(&format!("has a {}-byte segment; the limit is {MAX_SEGMENT_BYTES}", s.len()));
            }
            _ => {}
        }
    }
    Ok(normal)
}

/// The rejected input as quoted in an error: printable and bounded.
fn shown(raw: &str) -> String {
    let mut out: String = raw.chars().take(80).flat_map(char::escape_debug).collect();
    if raw.chars().nth(80).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects(raw: &str, rule: &str) {
        let err = ProjectPath::parse(raw).expect_err(raw);
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        assert!(err.message().contains(rule), "{raw:?}: {}", err.message());
    }

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["a", "src/main.rs", ".gitignore", "a/.b/..c/c..", "dir with space/ü.txt", "a\\b", "...", "🦀/x"] {
            assert_eq!(ProjectPath::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_each_rule_by_name() {
        rejects("", "is empty");
        rejects("/etc/passwd", "starts with `/`");
        rejects("a//b", "empty segment");
        rejects("a/", "empty segment");
        rejects("./a", "`.` segment");
        rejects("a/./b", "`.` segment");
        rejects("..", "`..` segment");
        rejects("a/../../b", "`..` segment");
        rejects("a\0b", "U+0000");
        rejects("a\nb", "U+000A");
        rejects("a\u{7f}", "U+007F");
        rejects("a\u{85}", "U+0085");
        rejects(&"x".repeat(256), "256-byte segment");
        rejects(&vec!["y".repeat(200); 6].join("/"), "1205 bytes long");
    }

    #[test]
    fn limits_are_inclusive() {
        assert!(ProjectPath::parse(&"x".repeat(255)).is_ok());
        let long =
            [&"y".repeat(255), &"y".repeat(255), &"y".repeat(255), &"y".repeat(254)].map(String::as_str).join("/");
        assert_eq!(long.len(), 1022);
        assert!(ProjectPath::parse(&format!("{long}/z")).is_ok());
        let err = ProjectPath::parse(&format!("{long}/zz")).unwrap_err();
        assert!(err.message().contains("1025 bytes"), "{}", err.message());
    }

    #[test]
    fn normalises_to_nfc() {
        let decomposed = "cafe\u{301}.txt";
        let path = ProjectPath::parse(decomposed).unwrap();
        assert_eq!(path.as_str(), "caf\u{e9}.txt");
        assert_eq!(path, ProjectPath::parse("caf\u{e9}.txt").unwrap());
    }

    #[test]
    fn error_quotes_input_safely() {
        let err = ProjectPath::parse("a\u{1b}[31m").unwrap_err();
        assert!(err.message().contains("a\\u{1b}[31m"), "{}", err.message());
    }

    #[test]
    fn folders_and_relations() {
        assert!(Folder::parse("").unwrap().is_root());
        assert!(Folder::parse("/").unwrap().is_root());
        let src = Folder::parse("src/").unwrap();
        assert_eq!(src.as_str(), "src");
        assert!(src.contains("src/a.rs"));
        assert!(!src.contains("src"));
        assert!(!src.contains("srcx/a.rs"));
        assert_eq!(src.relative("src/a/b.rs"), "a/b.rs");
        assert_eq!(src.bounds(), Some(("src/".into(), "src0".into())));
        assert!(Folder::parse("a//").is_err());
        let p = ProjectPath::parse("a/b/c").unwrap();
        assert_eq!(p.ancestors().collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(p.file_name(), "c");
        let moved = p.rebase(&ProjectPath::parse("a/b").unwrap(), &ProjectPath::parse("z").unwrap()).unwrap();
        assert_eq!(moved.as_str(), "z/c");
        assert!(p.rebase(&ProjectPath::parse("a/bb").unwrap(), &ProjectPath::parse("z").unwrap()).is_err());
    }
}
