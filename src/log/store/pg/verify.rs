//! `verify` on PostgreSQL: every log row's frames and every saga row's
//! entry and timer decoded client-side, in pages of one snapshot each (so
//! that no long transaction holds back vacuum), plus structural checks in
//! SQL. A problem's key is the saga id, followed by the row's `seq` (u64
//! BE) for a log row.

use super::link::Link;
use super::{db_error, saga_id, to_u64};
use crate::ids::SagaId;
use crate::log::codec;
use crate::log::record::WaitPurpose;
use crate::log::store::{IndexEntry, StoreError};
use crate::log::verify::{Problem, VerifyReport};

const PAGE: i64 = 1000;

const LOGS: &str = "SELECT saga_id, seq, frames FROM sagalog_log
    WHERE (saga_id, seq) > ($1, $2) ORDER BY saga_id, seq LIMIT $3";
const SAGAS: &str = "SELECT saga_id, entry, timer_due, timer_purpose FROM sagalog_saga
    WHERE saga_id > $1 ORDER BY saga_id LIMIT $2";
const NO_START: &str = "SELECT s.saga_id FROM sagalog_saga s WHERE NOT EXISTS
    (SELECT 1 FROM sagalog_log l WHERE l.saga_id = s.saga_id AND l.seq = 0) ORDER BY 1";
const NO_SAGA: &str = "SELECT DISTINCT l.saga_id FROM sagalog_log l
    LEFT JOIN sagalog_saga s ON s.saga_id = l.saga_id WHERE s.saga_id IS NULL ORDER BY 1";
const KEY_NO_SAGA: &str = "SELECT k.saga_id, k.key FROM sagalog_key k
    LEFT JOIN sagalog_saga s ON s.saga_id = k.saga_id WHERE s.saga_id IS NULL ORDER BY 1";

fn problem(
    report: &mut VerifyReport,
    saga: SagaId,
    seq: Option<u64>,
    what: &'static str,
    error: String,
) {
    let mut key = saga.to_bytes().to_vec();
    if let Some(seq) = seq {
        key.extend_from_slice(&seq.to_be_bytes());
    }
    report.problems.push(Problem {
        key,
        saga: Some(saga),
        what,
        error,
    });
}

pub(super) async fn verify(link: &Link) -> Result<VerifyReport, StoreError> {
    let doing = "verifying the log";
    let conn = link.conn().await?;
    let client = &conn.client;
    let fail = |e| db_error(doing, e);
    let mut report = VerifyReport::default();

    let (mut after, mut after_seq) = (uuid::Uuid::nil(), -1i64);
    loop {
        let rows = client
            .query(LOGS, &[&after, &after_seq, &PAGE])
            .await
            .map_err(fail)?;
        for row in &rows {
            let id: uuid::Uuid = row.try_get(0).map_err(fail)?;
            let seq: i64 = row.try_get(1).map_err(fail)?;
            let frames: Vec<u8> = row.try_get(2).map_err(fail)?;
            report.keys += 1;
            report.log_values += 1;
            match codec::decode_records(&frames) {
                Ok(records) => report.records += records.len() as u64,
                Err(e) => problem(
                    &mut report,
                    saga_id(id),
                    Some(to_u64(seq)),
                    "log",
                    e.to_string(),
                ),
            }
            (after, after_seq) = (id, seq);
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }

    let mut after = uuid::Uuid::nil();
    loop {
        let rows = client.query(SAGAS, &[&after, &PAGE]).await.map_err(fail)?;
        for row in &rows {
            let id: uuid::Uuid = row.try_get(0).map_err(fail)?;
            let entry: Vec<u8> = row.try_get(1).map_err(fail)?;
            let due: Option<i64> = row.try_get(2).map_err(fail)?;
            let purpose: Option<Vec<u8>> = row.try_get(3).map_err(fail)?;
            report.keys += 1;
            report.index_entries += 1;
            if let Err(e) = codec::decode_index_entry::<IndexEntry>(&entry) {
                problem(&mut report, saga_id(id), None, "index entry", e.to_string());
            }
            match (due, purpose) {
                (Some(_), None) => problem(
                    &mut report,
                    saga_id(id),
                    None,
                    "timer",
                    "a timer without a purpose".into(),
                ),
                (_, Some(purpose)) => {
                    if let Err(e) = codec::decode_index_entry::<WaitPurpose>(&purpose) {
                        problem(&mut report, saga_id(id), None, "timer", e.to_string());
                    }
                }
                (None, None) => {}
            }
            after = id;
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }

    for row in client.query(NO_START, &[]).await.map_err(fail)? {
        let id: uuid::Uuid = row.try_get(0).map_err(fail)?;
        problem(
            &mut report,
            saga_id(id),
            None,
            "saga",
            "a saga row without its start record (seq 0)".into(),
        );
    }
    for row in client.query(NO_SAGA, &[]).await.map_err(fail)? {
        let id: uuid::Uuid = row.try_get(0).map_err(fail)?;
        problem(
            &mut report,
            saga_id(id),
            None,
            "log",
            "a log without a saga row (a partly deleted saga)".into(),
        );
    }
    for row in client.query(KEY_NO_SAGA, &[]).await.map_err(fail)? {
        let id: uuid::Uuid = row.try_get(0).map_err(fail)?;
        let key: String = row.try_get(1).map_err(fail)?;
        report.keys += 1;
        problem(
            &mut report,
            saga_id(id),
            None,
            "idempotency key",
            format!("key '{key}' names a saga that is not there"),
        );
    }
    Ok(report)
}
