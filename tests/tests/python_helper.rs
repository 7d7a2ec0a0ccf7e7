//! The Python helper's own unit tests (`clients/python/test_tollgate_http.py`), run by
//! `cargo test` so CI runs them with the rest.
//!
//! They check the exceptions `tollgate_http` raises for tollgate's answers (the team quota
//! errors with their `retry_after`, `quota` and `scope`) against a fake proxy on loopback;
//! the real proxy's answers are tested end to end elsewhere. The interpreter is
//! `/usr/bin/python3`, the one sandboxes run, with the standard library only (`unittest`).

use std::path::Path;
use std::process::Command;

/// `-B`: no `__pycache__` in the checkout; `-E -s`: no `PYTHON*` variable or user site of
/// the machine's changes what is imported; `-v`: each test's name in a failure's report.
const PYTHON_ARGS: &[&str] = &["-B", "-E", "-s", "-m", "unittest", "-v", MODULE];

/// The helper's unit tests, beside it in `clients/python/`.
const MODULE: &str = "test_tollgate_http";

#[test]
fn the_python_helpers_unit_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    let output = Command::new("/usr/bin/python3")
        .args(PYTHON_ARGS)
        .current_dir(&dir)
        .output()
        .expect("run /usr/bin/python3");
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the helper's unit tests failed ({}):\n{report}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    let ran = report
        .lines()
        .find_map(tests_ran)
        .unwrap_or_else(|| panic!("unittest printed no \"Ran N tests\" line:\n{report}"));
    assert!(ran > 0, "no unit test of the helper ran:\n{report}");
}

/// `N` of unittest's `Ran N tests in 0.5s` line.
fn tests_ran(line: &str) -> Option<u32> {
    line.strip_prefix("Ran ")?.split(' ').next()?.parse().ok()
}
