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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each template, written out, passes its own test with nothing but its language's tools,
    /// offline.
    #[test]
    fn every_template_passes_its_own_test_offline() {
        let runs: [(&str, &[&str]); 3] = [
            ("python", &["python3", "-m", "unittest", "-q"]),
            ("node", &["node", "--test"]),
            ("rust", &["cargo", "test", "--offline", "-q"]),
        ];
        for (name, command) in runs {
            let template = find(name).expect("a template");
            let dir = tempfile::tempdir().unwrap();
            for (path, content) in template.files {
                let file = dir.path().join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, content).unwrap();
            }
            let mut cmd = std::process::Command::new(command[0]);
            cmd.args(&command[1..]).current_dir(dir.path()).env("CARGO_TARGET_DIR", dir.path().join("target"));
            let out = match cmd.output() {
                Ok(out) => out,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "{} is needed in CI to check the {name} template",
                        command[0]
                    );
                    eprintln!("note: {} is not installed; the {name} template was not run", command[0]);
                    continue;
                }
                Err(e) => panic!("{name}: {e}"),
            };
            assert!(
                out.status.success(),
                "the {name} template's test fails:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
