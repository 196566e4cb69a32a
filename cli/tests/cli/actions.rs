//! Operator actions from the command line, recorded while the service is
//! stopped and carried out at its next start.

use super::harness::*;

#[test]
fn actions_are_recorded_and_the_service_carries_them_out_at_its_next_start() {
    let db = copy_of_fixture();
    let (manual, sleeping, _) = roles(db.path());
    let who = ["--actor", "cli-test", "--reason", "customer called"];
    stdout(&sagalog(
        db.path(),
        &[&["compensate", &manual][..], &who].concat(),
    ));
    stdout(&sagalog(
        db.path(),
        &[&["retry", &sleeping][..], &who].concat(),
    ));
    assert_eq!(
        json(db.path(), &["show", &manual])["saga"]["status"],
        "COMPENSATING",
        "recorded, not yet carried out"
    );

    let rerun = run_orders(db.path(), &[]);

    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    for id in [&manual, &sleeping] {
        let view = json(db.path(), &["show", id]);
        assert_eq!(view["saga"]["status"], "COMPENSATED");
        let actors: Vec<_> = view["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "operator_action")
            .map(|e| e["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(actors.len(), 1, "{actors:?}");
        assert!(actors[0].starts_with("operator cli-test"), "{actors:?}");
    }
}

#[test]
fn resolve_marks_a_step_compensated_by_hand() {
    let db = copy_of_fixture();
    let (manual, _, _) = roles(db.path());
    stdout(&sagalog(
        db.path(),
        &[
            "resolve",
            &manual,
            "--step",
            "reserve_stock",
            "--reason",
            "released in the warehouse UI",
        ],
    ));
    let view = json(db.path(), &["show", &manual]);
    assert_eq!(view["saga"]["steps"][0]["state"], "compensated");
}

#[test]
fn resolve_abandon_records_that_the_operator_gave_up() {
    let db = copy_of_fixture();
    let (manual, _, _) = roles(db.path());
    stdout(&sagalog(
        db.path(),
        &["resolve", &manual, "--abandon", "--reason", "written off"],
    ));
    let view = json(db.path(), &["show", &manual]);
    let last = view["timeline"].as_array().unwrap().last().unwrap().clone();
    assert!(last["text"].as_str().unwrap().contains("abandon"), "{last}");
}

#[test]
fn an_action_after_an_offline_abandon_is_refused_and_the_abandon_shows_as_pending() {
    let db = copy_of_fixture();
    let (manual, _, _) = roles(db.path());
    stdout(&sagalog(
        db.path(),
        &["resolve", &manual, "--abandon", "--reason", "written off"],
    ));

    let compensate = sagalog(db.path(), &["compensate", &manual, "--reason", "undo"]);
    let again = sagalog(
        db.path(),
        &["resolve", &manual, "--abandon", "--reason", "again"],
    );

    for refused in [compensate, again] {
        assert_eq!(refused.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("abandon by"), "{stderr}");
        assert!(stderr.contains("not yet carried out"), "{stderr}");
    }
    let queue = json(db.path(), &["manual"]);
    let item = &queue["manual_queue"][0];
    assert_eq!(item["saga_id"].as_str(), Some(manual.as_str()));
    assert!(item["pending"][0]
        .as_str()
        .unwrap()
        .starts_with("abandon by"));
    let view = json(db.path(), &["show", &manual]);
    assert!(view["saga"]["pending"][0]
        .as_str()
        .unwrap()
        .starts_with("abandon by"));
    let listed = stdout(&sagalog(db.path(), &["list"]));
    assert!(listed.contains("SUSPENDED (abandon pending)"), "{listed}");
}

#[test]
fn cancel_is_recorded_in_the_sagas_log() {
    let db = copy_of_fixture();
    let (_, sleeping, _) = roles(db.path());
    stdout(&sagalog(
        db.path(),
        &["cancel", &sleeping, "--reason", "order withdrawn"],
    ));
    let view = json(db.path(), &["show", &sleeping]);
    let last = view["timeline"].as_array().unwrap().last().unwrap().clone();
    assert!(last["text"].as_str().unwrap().contains("cancel"), "{last}");
}

#[test]
fn retry_of_a_finished_saga_is_refused_with_the_reason() {
    let (_, _, finished) = roles(fixture());
    let output = sagalog(fixture(), &["retry", &finished[0], "--reason", "why not"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("waits for nothing"), "{stderr}");
}
