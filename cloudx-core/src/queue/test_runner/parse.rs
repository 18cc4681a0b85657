//! Readers of test tools' human output: libtest (`cargo test`), `python3 -m unittest -v`,
//! `pytest -v` and node's TAP reporter. Each reads what it can and says whether it saw any
//! test result at all; none of them fails on output it does not know.

/// What a test run's output says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Parsed {
    /// Tests that passed.
    pub(super) passed: u64,
    /// Tests that failed (or errored).
    pub(super) failed: u64,
    /// Tests skipped (ignored, to-do, expected failures where the tool counts them apart).
    pub(super) skipped: u64,
    /// The failing tests, in the order the tool reported them: name and output.
    pub(super) failures: Vec<(String, String)>,
    /// Whether any test result or summary was read.
    pub(super) seen: bool,
}

impl Parsed {
    /// Adds failures named by result lines that have no section of their own, with no output.
    fn add_unexplained(&mut self, names: Vec<String>) {
        for name in names {
            if !self.failures.iter().any(|(n, _)| *n == name) {
                self.failures.push((name, String::new()));
            }
        }
    }
}

/// `cargo test` (libtest's human output): `test NAME ... ok|FAILED|ignored`, and the captured
/// output of each failure in a `---- NAME stdout ----` section. Every test target (unit tests,
/// integration tests, doc tests) adds to the counts.
pub(super) fn cargo(output: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut failed = Vec::new();
    // The section being read: its test's name and its lines.
    let mut section: Option<(String, Vec<&str>)> = None;
    let close = |section: &mut Option<(String, Vec<&str>)>, parsed: &mut Parsed| {
        if let Some((name, lines)) = section.take() {
            parsed.failures.push((name, lines.join("\n").trim().to_owned()));
        }
    };
    for line in output.lines() {
        if let Some(head) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" ----"))
            && let Some(name) = head.strip_suffix(" stdout").or_else(|| head.strip_suffix(" stderr"))
        {
            close(&mut section, &mut parsed);
            section = Some((name.to_owned(), Vec::new()));
            continue;
        }
        // The list of failures that follows the sections, or the next target's run.
        if line == "failures:" || line.starts_with("test result: ") || line.starts_with("running ") {
            close(&mut section, &mut parsed);
        }
        if let Some((_, lines)) = &mut section {
            lines.push(line);
            continue;
        }
        let Some((name, status)) = line.strip_prefix("test ").and_then(|l| l.rsplit_once(" ... ")) else {
            continue;
        };
        match status {
            "ok" => parsed.passed += 1,
            "FAILED" => {
                parsed.failed += 1;
                failed.push(name.to_owned());
            }
            s if s.starts_with("ignored") => parsed.skipped += 1,
            _ => continue,
        }
        parsed.seen = true;
    }
    close(&mut section, &mut parsed);
    // A section is only a failure's when its test failed (a passing test's output is not shown).
    parsed.failures.retain(|(name, _)| failed.contains(name));
    parsed.add_unexplained(failed);
    parsed
}

/// The statuses `unittest -v` prints after ` ... `, and what each counts as.
fn unittest_status(status: &str) -> Option<Outcome> {
    match status {
        "ok" | "expected failure" => Some(Outcome::Passed),
        "FAIL" | "ERROR" | "unexpected success" => Some(Outcome::Failed),
        s if s.starts_with("skipped") => Some(Outcome::Skipped),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

/// A unittest test's full name from `method (module.Class.method)` (Python 3.11 and later) or
/// `method (module.Class)` (before): `module.Class.method`.
fn unittest_name(head: &str) -> Option<String> {
    let (method, rest) = head.split_once(" (")?;
    let (id, _) = rest.split_once(')')?;
    if id.rsplit('.').next() == Some(method) { Some(id.to_owned()) } else { Some(format!("{id}.{method}")) }
}

/// Python's test output: pytest's when it shows its header, else unittest's.
pub(super) fn python(output: &str) -> Parsed {
    if output.lines().any(|l| l.starts_with('=') && l.contains(" test session starts ")) {
        pytest(output)
    } else {
        unittest(output)
    }
}

/// `python3 -m unittest -v`: `name (id) ... ok|FAIL|ERROR|skipped '...'` (the status on a line
/// of its own when the test printed to stderr), the `FAIL:` / `ERROR:` sections with their
/// tracebacks, and the `Ran N tests` summary, which gives the counts when the run was not
/// verbose.
pub(super) fn unittest(output: &str) -> Parsed {
    let lines: Vec<&str> = output.lines().collect();
    let mut parsed = Parsed::default();
    let mut failed = Vec::new();
    let mut pending: Option<String> = None;
    let mut counted = 0u64;
    let mut record = |name: Option<String>, outcome: Outcome, parsed: &mut Parsed| {
        counted += 1;
        match outcome {
            Outcome::Passed => parsed.passed += 1,
            Outcome::Skipped => parsed.skipped += 1,
            Outcome::Failed => {
                parsed.failed += 1;
                failed.extend(name);
            }
        }
    };
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("======")
            && let Some(head) =
                lines.get(i + 1).and_then(|l| l.strip_prefix("FAIL: ").or_else(|| l.strip_prefix("ERROR: ")))
        {
            // The traceback: after the dashes, up to the next section or the summary.
            let mut end = i + 3;
            while end < lines.len()
                && !lines[end].starts_with("======")
                && !(lines[end].starts_with("------") && lines.get(end + 1).is_some_and(|l| l.starts_with("Ran ")))
            {
                end += 1;
            }
            let body = lines.get(i + 3..end).unwrap_or_default().join("\n");
            let name = unittest_name(head).unwrap_or_else(|| head.to_owned());
            parsed.failures.push((name, body.trim().to_owned()));
            i = end;
            continue;
        }
        if let Some((head, status)) = line.rsplit_once(" ... ") {
            // A docstring's first line stands in for the name: the name is on the line before.
            let name = unittest_name(head).or_else(|| i.checked_sub(1).and_then(|p| unittest_name(lines[p])));
            match unittest_status(status) {
                Some(outcome) => record(name, outcome, &mut parsed),
                None => pending = name,
            }
        } else if let Some(outcome) = unittest_status(line.trim()).filter(|_| pending.is_some()) {
            record(pending.take(), outcome, &mut parsed);
        }
        i += 1;
    }
    parsed.seen = counted > 0;
    // The summary: `Ran N tests in 0.01s`, then `OK`, `OK (skipped=1)` or
    // `FAILED (failures=1, errors=1, skipped=1)`.
    let ran = lines.iter().enumerate().rev().find_map(|(at, l)| {
        let n = l.strip_prefix("Ran ")?.split(' ').next()?.parse::<u64>().ok()?;
        Some((at, n))
    });
    if let Some((at, n)) = ran {
        parsed.seen = true;
        if counted == 0 {
            let verdict = lines[at + 1..].iter().find(|l| l.starts_with("OK") || l.starts_with("FAILED")).copied();
            let count = |key: &str| {
                verdict
                    .and_then(|v| v.split(key).nth(1))
                    .and_then(|rest| rest.split([',', ')']).next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            parsed.failed = count("failures=") + count("errors=") + count("unexpected successes=");
            parsed.skipped = count("skipped=");
            parsed.passed = n.saturating_sub(parsed.failed + parsed.skipped);
        }
    }
    parsed.add_unexplained(failed);
    parsed
}

/// `pytest -v`: `path::test STATUS [ n%]` lines, the `FAILURES` / `ERRORS` sections headed
/// `____ Class.test ____`, and the final `== 1 failed, 2 passed in 0.1s ==` line, which gives the
/// counts when the run was not verbose.
pub(super) fn pytest(output: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut failed: Vec<String> = Vec::new();
    let mut counted = 0u64;
    let mut in_sections = false;
    let mut section: Option<(String, Vec<&str>)> = None;
    let mut summary: Option<&str> = None;
    let close = |section: &mut Option<(String, Vec<&str>)>, parsed: &mut Parsed| {
        if let Some((name, lines)) = section.take() {
            parsed.failures.push((name, lines.join("\n").trim().to_owned()));
        }
    };
    for line in output.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("===") && trimmed.ends_with("===") {
            close(&mut section, &mut parsed);
            let title = trimmed.trim_matches('=').trim();
            in_sections = title == "FAILURES" || title == "ERRORS";
            if title.contains(" in ") && title.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                summary = Some(title);
            }
            continue;
        }
        if in_sections && trimmed.starts_with("___") && trimmed.ends_with("___") && trimmed.len() > 6 {
            close(&mut section, &mut parsed);
            let title = trimmed.trim_matches('_').trim();
            let title = title
                .strip_prefix("ERROR at setup of ")
                .or_else(|| title.strip_prefix("ERROR at teardown of "))
                .unwrap_or(title);
            section = Some((title.to_owned(), Vec::new()));
            continue;
        }
        if let Some((_, lines)) = &mut section {
            lines.push(line);
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(id), Some(status)) = (words.next(), words.next()) else { continue };
        if !id.contains("::") {
            continue;
        }
        match status {
            "PASSED" | "XPASS" => parsed.passed += 1,
            "SKIPPED" | "XFAIL" => parsed.skipped += 1,
            "FAILED" | "ERROR" => {
                parsed.failed += 1;
                failed.push(id.to_owned());
            }
            _ => continue,
        }
        counted += 1;
    }
    close(&mut section, &mut parsed);
    // Sections are headed by the test's short name (`Class.test`): named by its node id when
    // one of the failed tests has it.
    for (name, _) in &mut parsed.failures {
        let tail = format!("::{}", name.replace('.', "::"));
        if let Some(id) = failed.iter().find(|id| id.ends_with(&tail)) {
            name.clone_from(id);
        }
    }
    parsed.seen = counted > 0 || summary.is_some();
    if counted == 0
        && let Some(summary) = summary
    {
        for part in summary.split(" in ").next().unwrap_or("").split(", ") {
            let Some((n, what)) = part.split_once(' ') else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" | "xpassed" => parsed.passed += n,
                "failed" | "error" | "errors" => parsed.failed += n,
                "skipped" | "xfailed" => parsed.skipped += n,
                _ => {}
            }
        }
    }
    parsed.add_unexplained(failed);
    parsed
}

/// Node's TAP reporter (`node --test --test-reporter=tap`): `ok N - name`, `not ok N - name`,
/// `# SKIP` / `# TODO` directives, suites as indented subtests (named `suite > test`), each
/// failure's YAML block as its output, and the `# pass` / `# fail` / `# skipped` / `# todo`
/// summary for the counts (leaf results are counted when it is missing).
pub(super) fn node_tap(output: &str) -> Parsed {
    let lines: Vec<&str> = output.lines().collect();
    let mut parsed = Parsed::default();
    let mut open: Vec<(usize, String)> = Vec::new();
    let mut previous_indent: Option<usize> = None;
    let mut leaves = Parsed::default();
    let mut summary: [Option<u64>; 5] = [None; 5];
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let text = line.trim_start();
        if let Some(name) = text.strip_prefix("# Subtest: ") {
            open.retain(|(at, _)| *at < indent);
            open.push((indent, name.to_owned()));
            i += 1;
            continue;
        }
        if indent == 0 {
            for (slot, key) in ["# pass ", "# fail ", "# skipped ", "# todo ", "# cancelled "].iter().enumerate() {
                if let Some(n) = text.strip_prefix(key).and_then(|n| n.trim().parse::<u64>().ok()) {
                    summary[slot] = Some(n);
                }
            }
        }
        let (ok, rest) = if let Some(rest) = text.strip_prefix("not ok ") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("ok ") {
            (true, rest)
        } else {
            i += 1;
            continue;
        };
        let rest = rest.split_once(" - ").map_or(rest, |(_, r)| r);
        let (own, directive) = match rest.split_once(" # ") {
            Some((n, d)) => (n, Some(d.to_ascii_uppercase())),
            None => (rest, None),
        };
        // The YAML block under the result, dedented.
        let mut block = Vec::new();
        let mut j = i + 1;
        if lines.get(j).is_some_and(|l| l.trim() == "---") {
            j += 1;
            while j < lines.len() && lines[j].trim() != "..." {
                block.push(lines[j].get(indent + 2..).unwrap_or_else(|| lines[j].trim_start()));
                j += 1;
            }
            j += 1;
        }
        open.retain(|(at, _)| *at < indent);
        let mut name: Vec<&str> = open.iter().map(|(_, n)| n.as_str()).collect();
        name.push(own);
        let name = name.join(" > ");
        // A suite: its subtests came just before it, more indented.
        let suite = previous_indent.is_some_and(|p| p > indent);
        previous_indent = Some(indent);
        parsed.seen = true;
        let skip = directive.as_deref().is_some_and(|d| d.starts_with("SKIP") || d.starts_with("TODO"));
        let subtests_failed = block.iter().any(|l| l.trim() == "failureType: 'subtestsFailed'");
        if !suite {
            match (ok, skip) {
                (_, true) => leaves.skipped += 1,
                (true, false) => leaves.passed += 1,
                (false, false) => leaves.failed += 1,
            }
        }
        if !ok && !skip && !subtests_failed {
            let body: Vec<&str> = block.into_iter().filter(|l| !l.starts_with("duration_ms:")).collect();
            parsed.failures.push((name, body.join("\n").trim().to_owned()));
        }
        i = j;
    }
    match summary {
        [Some(pass), Some(fail), skipped, todo, cancelled] => {
            parsed.seen = true;
            parsed.passed = pass;
            parsed.failed = fail + cancelled.unwrap_or(0);
            parsed.skipped = skipped.unwrap_or(0) + todo.unwrap_or(0);
        }
        _ => (parsed.passed, parsed.failed, parsed.skipped) = (leaves.passed, leaves.failed, leaves.skipped),
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from the real tools on the templates with a failing and a skipped test added
    // (the folder they ran in is shown as /workspace, where the sandbox runs them).
    const CARGO: &str = include_str!("testdata/cargo.txt");
    const UNITTEST: &str = include_str!("testdata/unittest.txt");
    const PYTEST: &str = include_str!("testdata/pytest.txt");
    const NODE: &str = include_str!("testdata/node-tap.txt");
    const NODE_SUITE: &str = include_str!("testdata/node-tap-suite.txt");

    fn counts(p: &Parsed) -> (u64, u64, u64, bool) {
        (p.passed, p.failed, p.skipped, p.seen)
    }

    fn names(p: &Parsed) -> Vec<&str> {
        p.failures.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn cargo_counts_every_target_and_keeps_each_failures_output() {
        let p = cargo(CARGO);
        // Unit tests (1 ok, 1 failed, 1 ignored) and a doc test (ok).
        assert_eq!(counts(&p), (2, 1, 1, true));
        assert_eq!(names(&p), ["more::shouts"]);
        let output = &p.failures[0].1;
        assert!(output.starts_with("about to compare"), "{output}");
        assert!(output.contains("left: \"HELLO, CLOUDX!\"") && !output.contains("failures:"), "{output}");
    }

    #[test]
    fn cargo_output_without_tests_is_not_seen() {
        let compile_error =
            "   Compiling hello v0.1.0 (/workspace)\nerror[E0425]: cannot find value `x` in this scope\n";
        assert_eq!(counts(&cargo(compile_error)), (0, 0, 0, false));
    }

    #[test]
    fn unittest_reads_results_and_tracebacks() {
        let p = python(UNITTEST);
        assert_eq!(counts(&p), (1, 2, 1, true));
        assert_eq!(names(&p), ["tests.test_more.MoreTest.test_breaks", "tests.test_more.MoreTest.test_shouts"]);
        assert!(p.failures[0].1.ends_with("RuntimeError: boom"), "{}", p.failures[0].1);
        let shouts = &p.failures[1].1;
        assert!(shouts.starts_with("Traceback") && shouts.contains("+ Hello, CLOUDX!"), "{shouts}");
        assert!(!shouts.contains("Ran 4 tests"), "{shouts}");
    }

    #[test]
    fn unittest_without_verbose_lines_counts_from_the_summary() {
        let quiet = "F.s\n======================================================================\nFAIL: test_a (m.C.test_a)\n\
                     ----------------------------------------------------------------------\nAssertionError: 1 != 2\n\n\
                     ----------------------------------------------------------------------\nRan 3 tests in 0.001s\n\n\
                     FAILED (failures=1, skipped=1)\n";
        let p = unittest(quiet);
        assert_eq!(counts(&p), (1, 1, 1, true));
        assert_eq!(p.failures, vec![("m.C.test_a".to_owned(), "AssertionError: 1 != 2".to_owned())]);
        // Older Pythons name the class only; a status after the test's own stderr output.
        let old = "test_b (m.C) ... some noise\nok\ntest_c (m.C) ... FAIL\n";
        let p = unittest(old);
        assert_eq!(counts(&p), (1, 1, 0, true));
        assert_eq!(names(&p), ["m.C.test_c"]);
    }

    #[test]
    fn pytest_reads_results_and_sections_by_node_id() {
        let p = python(PYTEST);
        assert_eq!(counts(&p), (1, 2, 1, true));
        assert_eq!(
            names(&p),
            ["tests/test_more.py::MoreTest::test_breaks", "tests/test_more.py::MoreTest::test_shouts"]
        );
        assert!(p.failures[0].1.contains("E       RuntimeError: boom"), "{}", p.failures[0].1);
        let shouts = &p.failures[1].1;
        assert!(shouts.contains("Captured stdout call") && shouts.contains("about to compare"), "{shouts}");
        assert!(!shouts.contains("short test summary"), "{shouts}");
        // Not verbose: the last line gives the counts.
        let quiet =
            "============ test session starts ============\n.F.\n==== 1 failed, 2 passed, 3 skipped in 0.1s ====\n";
        assert_eq!(counts(&python(quiet)), (2, 1, 3, true));
    }

    #[test]
    fn node_tap_reads_results_skips_and_yaml_blocks() {
        let p = node_tap(NODE);
        // The summary's counts: one to-do test counts as skipped.
        assert_eq!(counts(&p), (1, 1, 2, true));
        assert_eq!(names(&p), ["shouts"]);
        let output = &p.failures[0].1;
        assert!(output.contains("+ 'HELLO, CLOUDX!'") && output.contains("stack: |-"), "{output}");
        assert!(!output.contains("duration_ms"), "{output}");
    }

    #[test]
    fn node_tap_names_tests_in_suites_and_skips_the_suites_own_failure() {
        let p = node_tap(NODE_SUITE);
        assert_eq!(counts(&p), (2, 1, 0, true));
        assert_eq!(names(&p), ["maths > subtracts"]);
        assert!(p.failures[0].1.contains("1 !== 0"), "{}", p.failures[0].1);
        // Without the summary (cut output), leaves are counted: the suite is not a test.
        let cut: String = NODE_SUITE.lines().take_while(|l| !l.starts_with("1..")).collect::<Vec<_>>().join("\n");
        assert_eq!(counts(&node_tap(&cut)), (2, 1, 0, true));
    }

    #[test]
    fn nothing_known_is_not_seen() {
        for parse in [cargo, python, node_tap] {
            assert!(!parse("Segmentation fault\n").seen);
        }
    }
}
