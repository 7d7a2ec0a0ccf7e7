//! Reading a probe's `<check> <outcome>` lines and asserting them all at once.

/// The outcome printed for `check` (the rest of the line `<check> <outcome>`).
pub fn outcome<'a>(stdout: &'a str, check: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(check)?.strip_prefix(' '))
}

/// Asserts every `(check, allowed outcomes)`, reporting all mismatches at once.
pub fn assert_outcomes(what: &str, stdout: &str, expected: &[(&str, &[&str])]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(check, allowed)| {
            let got = outcome(stdout, check);
            (!got.is_some_and(|g| allowed.contains(&g)))
                .then(|| format!("  {check}: expected one of {allowed:?}, got {got:?}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}:\n{}\n--- probe output ---\n{stdout}",
        wrong.join("\n")
    );
}
