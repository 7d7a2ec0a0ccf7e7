//! Policy files written to hurt the loader: deep nesting, alias bombs, oversized files. Each
//! is refused with one error that says where and what, before it is parsed in full.

use std::io::Write as _;
use tollgate_policy::{Policy, PolicyErrors};

fn refused(text: &str) -> PolicyErrors {
    match Policy::from_yaml("hostile.yaml", text) {
        Ok(_) => panic!("loaded a hostile policy"),
        Err(errors) => errors,
    }
}

fn first(errors: &PolicyErrors) -> (Option<usize>, Option<usize>, &str) {
    let error = &errors.errors[0];
    (error.line, error.column, error.message.as_str())
}

#[test]
fn deep_flow_nesting_is_refused_at_the_level_past_the_limit() {
    let levels = 100_000;
    let text = format!(
        "version: 1\nteam: t\nnetwork: {}{}\n",
        "[".repeat(levels),
        "]".repeat(levels)
    );
    let errors = refused(&text);
    assert_eq!(errors.errors.len(), 1);
    let (line, column, message) = first(&errors);
    // `network` is level 1; the 64th `[` is level 65, at column 10 + 63.
    assert_eq!((line, column), (Some(3), Some(10 + 63)), "{errors}");
    assert!(message.contains("deeper than 64 levels"), "{message}");
    assert!(
        errors.to_string().starts_with("hostile.yaml:3:73: "),
        "{errors}"
    );
}

#[test]
fn deep_block_nesting_is_refused_too() {
    for text in [
        format!("version: 1\nteam: t\nnetwork:\n{}x\n", "- ".repeat(100_000)),
        {
            // Indented mappings: 65 levels.
            let mut text = String::from("version: 1\nteam: t\n");
            for level in 0..65 {
                text.push_str(&format!("{}k{level}:\n", "  ".repeat(level)));
            }
            text
        },
        // Flow inside block.
        format!(
            "version: 1\nteam: t\nnetwork:\n{}{{a: {}}}\n",
            "- ".repeat(40),
            "[".repeat(40)
        ),
    ] {
        let errors = refused(&text);
        let (line, column, message) = first(&errors);
        assert!(line.is_some() && column.is_some(), "{errors}");
        assert!(message.contains("deeper than 64 levels"), "{message}");
    }
}

#[test]
fn alias_bombs_are_refused_by_their_expanded_size() {
    // Nine aliases of nine aliases …
    let mut laughs = String::from(
        "version: 1\nteam: t\nnetwork:\n  allow: []\nx0: &a0 [l, l, l, l, l, l, l, l, l]\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        laughs.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
    }
    let errors = refused(&laughs);
    let (line, _, message) = first(&errors);
    assert_eq!(line, Some(11), "{errors}");
    assert!(message.contains("aliases expanded"), "{message}");
    // One large, valid entry repeated by tens of thousands of aliases.
    let rules: Vec<String> = (0..8000)
        .map(|i| format!("{{method: GET, path: /p{i}}}"))
        .collect();
    let mut wide = format!(
        "version: 1\nteam: t\nnetwork:\n  allow:\n    - &e {{host: a.example, rules: [{}]}}\n",
        rules.join(", ")
    );
    while wide.len() < 1000 * 1024 {
        wide.push_str("    - *e\n");
    }
    let errors = refused(&wide);
    assert!(first(&errors).2.contains("aliases expanded"), "{errors}");
    // An alias of a deep node, placed deep.
    let half = 40;
    let deep = format!(
        "version: 1\nteam: t\nx: &d {}{}\ny: {}*d{}\n",
        "[".repeat(half),
        "]".repeat(half),
        "[".repeat(half),
        "]".repeat(half)
    );
    let errors = refused(&deep);
    assert!(first(&errors).2.contains("alias"), "{errors}");
}

#[test]
fn ordinary_anchors_still_load() {
    let policy = Policy::from_yaml(
        "anchors.yaml",
        "version: 1\nteam: t\nnetwork:\n  allow:\n    - host: a.example\n      rules: &common\n        - {method: GET, path: /x/**}\n    - host: b.example\n      rules: *common\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy.network.map(|n| n.entries.len()), Some(2));
}

#[test]
fn oversized_and_irregular_files_are_refused_without_reading_them_whole() {
    let dir = std::env::temp_dir().join(format!("tollgate-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.yaml");
    let mut file = std::fs::File::create(&big).unwrap();
    file.write_all(b"version: 1\nteam: t\n# ").unwrap();
    file.write_all(&vec![b'x'; 2 * 1024 * 1024]).unwrap();
    drop(file);
    for path in [big.as_path(), std::path::Path::new("/dev/zero"), &dir] {
        let errors = Policy::load(path).expect_err("refused");
        let message = &errors.errors[0].message;
        assert!(
            message.contains("larger than 1 MiB") || message.contains("not a regular file"),
            "{}: {message}",
            path.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let text = format!("version: 1\nteam: t\n# {}\n", "x".repeat(1024 * 1024));
    assert!(refused(&text).to_string().contains("larger than 1 MiB"));
}

#[test]
fn a_file_of_mistakes_lists_the_first_hundred_and_counts_the_rest() {
    let statuses = vec!["5"; 20_000].join(",");
    let text = format!("version: 1\nteam: t\nretry:\n  on_status: [{statuses}]\n");
    let errors = refused(&text);
    assert_eq!(errors.errors.len(), 101, "{}", errors.errors.len());
    assert_eq!(errors.errors[0].line, Some(4));
    assert_eq!(
        errors.errors[100].message,
        "and 19900 more problems (fix the ones above first)"
    );
}

#[test]
fn rego_nested_past_the_limit_is_refused_before_regorus_parses_it() {
    let text = format!(
        "version: 1\nteam: t\nrego: |\n  package tollgate.team\n  x := {}1{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let errors = refused(&text);
    let (line, column, message) = first(&errors);
    // The 11th `[` of line 5 of the file (the module's line 2).
    assert_eq!((line, column), (Some(5), Some(6 + 10)), "{errors}");
    assert!(message.contains("nested deeper than 10"), "{message}");
}
