//! `network.transparent`: the switch for transparent egress (a stub resolver with synthetic
//! addresses and a redirect to the proxy), on by default; its spellings and refusals.

use tollgate_policy::Policy;

const HEAD: &str = "version: 1\nteam: acme\nnetwork:\n  allow: [https://api.example.com]\n";

fn load(extra: &str) -> Result<Policy, tollgate_policy::PolicyErrors> {
    Policy::from_yaml("team.yaml", &format!("{HEAD}{extra}"))
}

fn transparent(extra: &str) -> bool {
    load(extra)
        .expect("policy")
        .network
        .expect("network")
        .transparent
}

#[test]
fn transparent_egress_is_on_unless_switched_off() {
    assert!(transparent(""));
    assert!(transparent("  transparent: true\n"));
    assert!(!transparent("  transparent: false\n"));
    let all = Policy::from_yaml(
        "team.yaml",
        "version: 1\nteam: acme\nnetwork:\n  allow_all: true\n  transparent: false\n",
    )
    .expect("policy");
    assert!(!all.network.expect("network").transparent);
}

#[test]
fn a_transparent_that_is_not_a_boolean_is_refused_at_its_line() {
    for (value, found) in [
        ("\"yes\"", "string \"yes\""),
        ("yes", "string \"yes\""),
        ("1", "integer `1`"),
        ("[true]", "sequence"),
    ] {
        let errors = match load(&format!("  transparent: {value}\n")) {
            Ok(_) => panic!("transparent: {value} should be refused"),
            Err(errors) => errors,
        };
        assert_eq!(errors.errors.len(), 1, "{errors}");
        let error = &errors.errors[0];
        assert_eq!(error.line, Some(5), "{errors}");
        assert_eq!(error.column, Some(16), "{errors}");
        assert!(
            error.message.contains("network.transparent")
                && error.message.contains(found)
                && error.message.contains("expected a boolean"),
            "{errors}"
        );
        // One line, FILE:LINE:COL first, as `policy check` prints it.
        let printed = errors.to_string();
        assert!(printed.starts_with("team.yaml:5:16: "), "{printed}");
        assert_eq!(printed.trim_end().lines().count(), 1, "{printed}");
    }
}

#[test]
fn a_misspelt_switch_is_an_unknown_field() {
    let errors = load("  transparnt: false\n").expect_err("unknown key");
    assert!(
        errors.to_string().contains("unknown field `transparnt`"),
        "{errors}"
    );
}

#[test]
fn the_schema_describes_the_switch() {
    let schema = serde_json::to_value(schemars::schema_for!(tollgate_policy::schema::PolicyFile))
        .expect("schema");
    let switch = &schema["$defs"]["NetworkSection"]["properties"]["transparent"];
    assert_eq!(switch["type"], "boolean", "{switch}");
    assert_eq!(switch["default"], true, "{switch}");
    assert!(
        switch["description"]
            .as_str()
            .is_some_and(|d| d.contains("stub resolver")),
        "{switch}"
    );
}
