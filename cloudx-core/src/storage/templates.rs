//! The built-in project templates: small packages with a passing test, using only each
//! language's standard tools, so that they run offline in the sandbox.

/// A template: its name, what it is, and its files (path, content).
#[derive(Debug)]
pub(super) struct Builtin {
    pub(super) name: &'static str,
    pub(super) description: &'static str,
    pub(super) files: &'static [(&'static str, &'static str)],
}

macro_rules! file {
    ($template:literal, $path:literal) => {
        ($path, include_str!(concat!("../../templates/", $template, "/", $path)))
    };
}

/// Every template, `empty` first.
pub(super) const ALL: &[Builtin] = &[
    Builtin { name: "empty", description: "No files.", files: &[] },
    Builtin {
        name: "python",
        description: "A Python package with a test (`python3 -m unittest` or `pytest`).",
        files: &[
            file!("python", "README.md"),
            (".gitignore", include_str!("../../templates/python/gitignore")),
            file!("python", "pyproject.toml"),
            file!("python", "hello/__init__.py"),
            file!("python", "tests/__init__.py"),
            file!("python", "tests/test_hello.py"),
        ],
    },
    Builtin {
        name: "rust",
        description: "A Rust library crate with a test (`cargo test`).",
        files: &[
            file!("rust", "README.md"),
            (".gitignore", include_str!("../../templates/rust/gitignore")),
            file!("rust", "Cargo.toml"),
            file!("rust", "src/lib.rs"),
        ],
    },
    Builtin {
        name: "node",
        description: "A Node.js package with a test (`node --test`).",
        files: &[
            file!("node", "README.md"),
            (".gitignore", include_str!("../../templates/node/gitignore")),
            file!("node", "package.json"),
            file!("node", "index.js"),
            file!("node", "test/index.test.js"),
        ],
    },
];

/// The template named `name`.
pub(super) fn find(name: &str) -> Option<&'static Builtin> {
    ALL.iter().find(|t| t.name == name)
}
