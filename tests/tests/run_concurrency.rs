//! Many executions at once: all succeed, each gets its own id, and all clean up.
//!
//! Needs root.

use std::{
    collections::BTreeSet,
    sync::{Arc, Barrier},
    thread,
};

use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{assert_execution_gone, is_execution_id, read_json, Sandbox, NETWORK_POLICY},
    Scratch,
};

const EXECUTIONS: usize = 50;

#[test]
fn fifty_concurrent_executions_all_succeed_and_clean_up() {
    let _lock = SuiteLock::shared();
    let scratch = Arc::new(Scratch::new("concurrent"));
    let policy = scratch.file("policy.yaml", NETWORK_POLICY);
    let barrier = Arc::new(Barrier::new(EXECUTIONS));
    let handles: Vec<_> = (0..EXECUTIONS)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let scratch = Arc::clone(&scratch);
            let policy = policy.clone();
            thread::spawn(move || {
                let summary = scratch.output(&format!("summary-{i}.json"));
                // Half with the network (namespace + proxy listener), half without.
                let mut sandbox = Sandbox::new().summary(&summary);
                if i % 2 == 0 {
                    sandbox = sandbox.policy(&policy);
                }
                let command = sandbox.command(["/bin/sh", "-c", &format!("exit {}", i % 3)]);
                barrier.wait();
                let mut command = command;
                let finished = tollgate_tests::sandbox::output(
                    &mut command,
                    Some(b""),
                    std::time::Duration::from_secs(120),
                );
                (i, finished, read_json(&summary))
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for handle in handles {
        let (i, finished, summary) = handle.join().expect("execution thread");
        assert_eq!(
            finished.code(),
            (i % 3) as i32,
            "execution {i}: {}",
            finished.describe()
        );
        let id = summary["execution"].as_str().unwrap_or_default().to_owned();
        assert!(is_execution_id(&id), "execution {i}: {summary}");
        assert_execution_gone(&id);
        assert!(ids.insert(id.clone()), "execution id {id} was used twice");
    }
    assert_eq!(ids.len(), EXECUTIONS);
}
