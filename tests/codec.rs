//! The record codec: every kind round-trips, every kind of bad bytes is a
//! typed error, nothing panics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

use sagalog::store::IndexEntry;
use sagalog::tools::{
    decode_index_entry, decode_record, decode_records, decode_records_prefix, decode_value,
    encode_index_entry, encode_record, encode_value, HEADER_LEN, MAX_PAYLOAD,
};
use sagalog::{
    CallFailed, CallRef, CallSucceeded, Decided, Decision, DecodeError, EncodeError, ErrorClass,
    Finished, OperatorAction, OperatorCommand, ParentLink, PlanKind, Record, SagaPlan, SagaStarted,
    StepFailure, StepPlan, Suspended, TimerSet, WaitPurpose,
};
use sagalog::{
    CompensationStrategy, InDoubtPolicy, RetryPolicy, SagaId, SagaStatus, SagaType, StepName,
    UnixMillis,
};

fn every_kind() -> Vec<Record> {
    let call = CallRef {
        step: 2,
        attempt: 3,
    };
    let failure = StepFailure {
        class: ErrorClass::Unknown,
        message: "timed out".into(),
    };
    vec![
        Record::SagaStarted(Box::new(SagaStarted {
            saga_type: "order".into(),
            version: 7,
            input: vec![1, 2, 3],
            plan: SagaPlan {
                steps: vec![
                    StepPlan::named("a", vec![]),
                    StepPlan {
                        name: "b".into(),
                        strategy: Some(CompensationStrategy::Scheduled { delay_ms: 5 }),
                        retry: Some(RetryPolicy::no_retry()),
                        timeout_ms: Some(250),
                        after: vec![],
                        child: Some("payment".into()),
                    },
                    StepPlan::named("c", vec![0, 1]),
                ],
                strategy: CompensationStrategy::RetryThenCompensate {
                    policy: RetryPolicy {
                        jitter: 0.25,
                        deadline_ms: Some(60_000),
                        ..RetryPolicy::forward_default()
                    },
                },
                retry: RetryPolicy::forward_default(),
                compensation_retry: RetryPolicy::compensation_default(),
                in_doubt: InDoubtPolicy::Compensate,
                timeout_ms: None,
                kind: PlanKind::Tcc {
                    async_confirm: true,
                    async_cancel: false,
                },
                max_parallel: 4,
            },
            idempotency_key: Some("order-1".into()),
            parent: Some(ParentLink {
                saga: SagaId::new(),
                step: 2,
            }),
        })),
        Record::StepStarted(call),
        Record::StepSucceeded(CallSucceeded {
            call,
            output: vec![9; 40],
        }),
        Record::StepFailed(CallFailed {
            call,
            failure: failure.clone(),
        }),
        Record::CompensationStarted(call),
        Record::CompensationSucceeded(call),
        Record::CompensationFailed(CallFailed { call, failure }),
        Record::SagaSuspended(Suspended {
            reason: "operator".into(),
        }),
        Record::SagaFinished(Finished {
            status: SagaStatus::Compensated,
        }),
        Record::TimerSet(TimerSet {
            due: UnixMillis(1_700_000_060_000),
            purpose: WaitPurpose::CompensationBackoff {
                step: 1,
                attempt: 4,
            },
        }),
        Record::OperatorAction(OperatorAction {
            actor: "ops@example".into(),
            reason: "customer called".into(),
            command: OperatorCommand::MarkCompensated { step: 2 },
        }),
        Record::Decided(Decided {
            decision: Decision::Commit,
        }),
        Record::ConfirmStarted(call),
        Record::ConfirmSucceeded(call),
        Record::ConfirmFailed(CallFailed {
            call,
            failure: StepFailure {
                class: ErrorClass::Retryable,
                message: "busy".into(),
            },
        }),
    ]
}

fn sample_frame() -> Vec<u8> {
    encode_record(
        UnixMillis(42),
        &Record::StepStarted(CallRef {
            step: 1,
            attempt: 1,
        }),
    )
    .unwrap()
}

fn with_fixed_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[..8]);
    crc.update(&frame[HEADER_LEN..]);
    let sum = crc.finalize().to_be_bytes();
    frame[8..12].copy_from_slice(&sum);
    frame
}

#[test]
fn every_record_kind_round_trips_with_its_timestamp() {
    for (i, record) in every_kind().into_iter().enumerate() {
        let at = UnixMillis(1_700_000_000_000 + i as u64);
        let frame = encode_record(at, &record).unwrap();
        assert_eq!(decode_record(&frame), Ok((at, record)));
    }
}

#[test]
fn index_entry_round_trips() {
    let entry = IndexEntry {
        saga_type: "order".into(),
        status: SagaStatus::Running,
        started_at: UnixMillis(5),
        next_wake: Some(UnixMillis(9)),
        changed_at: UnixMillis(7),
        pending: None,
    };
    let bytes = encode_index_entry(&entry).unwrap();
    assert_eq!(decode_index_entry::<IndexEntry>(&bytes), Ok(entry));
}

#[test]
fn fewer_bytes_than_a_header_are_truncated() {
    let frame = sample_frame();
    assert_eq!(
        decode_record(&frame[..5]),
        Err(DecodeError::Truncated { len: 5 })
    );
    assert_eq!(decode_record(&[]), Err(DecodeError::Truncated { len: 0 }));
}

#[test]
fn wrong_magic_is_rejected() {
    let mut frame = sample_frame();
    frame[0] = b'X';
    assert_eq!(
        decode_record(&frame),
        Err(DecodeError::BadMagic {
            found: [b'X', b'G']
        })
    );
}

#[test]
fn unknown_format_version_is_rejected() {
    let mut frame = sample_frame();
    frame[2] = 9;
    assert_eq!(
        decode_record(&frame),
        Err(DecodeError::UnknownVersion { found: 9 })
    );
}

#[test]
fn declared_length_over_the_limit_is_rejected_before_use() {
    let mut frame = sample_frame();
    frame[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        decode_record(&frame),
        Err(DecodeError::LengthOverLimit {
            len: u32::MAX as usize,
            max: MAX_PAYLOAD
        })
    );
}

#[test]
fn truncated_payload_is_a_length_mismatch() {
    let frame = sample_frame();
    let short = &frame[..frame.len() - 1];
    assert!(matches!(
        decode_record(short),
        Err(DecodeError::LengthMismatch { .. })
    ));
}

#[test]
fn flipped_payload_bit_fails_the_checksum() {
    let mut frame = sample_frame();
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    assert!(matches!(
        decode_record(&frame),
        Err(DecodeError::ChecksumMismatch { .. })
    ));
}

#[test]
fn flipped_header_bit_fails_the_checksum() {
    let mut frame = sample_frame();
    frame[3] ^= 0x04; // the kind byte is covered by the crc
    assert!(matches!(
        decode_record(&frame),
        Err(DecodeError::ChecksumMismatch { .. })
    ));
}

#[test]
fn unknown_kind_with_valid_checksum_is_rejected() {
    let mut frame = sample_frame();
    frame[3] = 200;
    let frame = with_fixed_crc(frame);
    assert_eq!(
        decode_record(&frame),
        Err(DecodeError::UnknownKind { found: 200 })
    );
}

#[test]
fn payload_of_the_wrong_shape_is_malformed() {
    // A step_started payload relabelled as saga_started, checksum fixed.
    let mut frame = sample_frame();
    frame[3] = 1;
    let frame = with_fixed_crc(frame);
    assert!(matches!(
        decode_record(&frame),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn trailing_bytes_after_the_payload_are_rejected() {
    let mut frame = sample_frame();
    frame.push(0);
    let len = (frame.len() - HEADER_LEN) as u32;
    frame[4..8].copy_from_slice(&len.to_be_bytes());
    let frame = with_fixed_crc(frame);
    assert_eq!(
        decode_record(&frame),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
}

#[test]
fn oversized_value_is_refused_at_encoding() {
    let big = vec![0u8; MAX_PAYLOAD + 1];
    assert!(matches!(
        encode_value(&big),
        Err(EncodeError::TooLarge { .. })
    ));
}

#[test]
fn value_with_trailing_bytes_is_rejected() {
    let mut bytes = encode_value(&7u32).unwrap();
    bytes.push(1);
    assert_eq!(
        decode_value::<u32>(&bytes),
        Err(DecodeError::TrailingBytes { count: 1 })
    );
}

#[test]
fn huge_declared_collection_length_does_not_allocate_or_panic() {
    // A varint length prefix claiming u64::MAX elements.
    let bytes = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert!(decode_value::<Vec<u8>>(&bytes).is_err());
}

#[test]
fn every_prefix_and_every_single_byte_flip_is_an_error_not_a_panic() {
    for record in every_kind() {
        let frame = encode_record(UnixMillis(1), &record).unwrap();
        for len in 0..frame.len() {
            assert!(decode_record(&frame[..len]).is_err());
        }
        for i in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    decode_record(&damaged).is_err(),
                    "flip at {i}.{bit} went unnoticed"
                );
            }
        }
    }
}

/// Found by the `decode_record` fuzz target: a valid start record whose
/// retry policies hold NaN and subnormal floats. It must decode, re-encode
/// stably, and give finite, sane delays.
#[test]
fn start_record_with_nan_policy_fields_decodes_and_yields_sane_delays() {
    let crash: &[u8] = &[
        0xcd, 0xd3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0,
        0, 0, 0xfd, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff,
        0xff, 0xff, 0xff, 0xff, 0, 0x01, 0, // layout 4: plan kind Saga, max_parallel 1
        0, 0x01, // idempotency key, parent link: none
        0, 0,
    ];
    let frame = sagalog::testing::frame_payload(1, &crash[1..]).unwrap();
    let (at, record) = decode_record(&frame).expect("the fuzzer's frame decodes");
    let once = encode_record(at, &record).unwrap();
    let (at2, record2) = decode_record(&once).unwrap();
    assert_eq!(encode_record(at2, &record2).unwrap(), once);
    let Record::SagaStarted(start) = record else {
        panic!("kind 1 is a start record");
    };
    for policy in [start.plan.retry, start.plan.compensation_retry] {
        assert!(policy.jitter.is_nan() || policy.jitter.is_finite());
        for attempt in 0..70 {
            let wait = policy.jittered_delay_after(attempt, 7);
            assert!(wait <= policy.max_interval_ms.max(policy.initial_interval_ms));
        }
    }
}

#[test]
fn a_value_damaged_in_its_last_frame_reads_the_frames_before_it() {
    let records = every_kind();
    let mut value: Vec<u8> = records
        .iter()
        .flat_map(|r| encode_record(UnixMillis(7), r).unwrap())
        .collect();
    let last = value.len() - 1;
    value[last] ^= 0x01;

    let (read, damage) = decode_records_prefix(&value);
    assert_eq!(read.len(), records.len() - 1);
    assert!(
        matches!(damage, Some(DecodeError::ChecksumMismatch { .. })),
        "{damage:?}"
    );
    assert_eq!(
        decode_records(&value).err(),
        damage,
        "reading it whole fails alike"
    );
}

#[test]
fn the_step_started_example_of_the_design_encodes_to_its_documented_bytes() {
    let frame = encode_record(
        UnixMillis(1_700_000_000_123),
        &Record::StepStarted(CallRef {
            step: 2,
            attempt: 1,
        }),
    )
    .unwrap();
    // DESIGN.md §3.2, byte for byte.
    let expected = [
        0x53, 0x47, 0x01, 0x02, 0x00, 0x00, 0x00, 0x0b, 0x5b, 0x25, 0x84, 0xae, 0xfd, 0x7b, 0x68,
        0xe5, 0xcf, 0x8b, 0x01, 0x00, 0x00, 0x02, 0x01,
    ];
    assert_eq!(frame, expected);
}

#[test]
fn framing_a_records_payload_gives_the_records_own_frame() {
    for record in every_kind() {
        let frame = encode_record(UnixMillis(9), &record).unwrap();
        let framed = sagalog::testing::frame_payload(frame[3], &frame[HEADER_LEN..]).unwrap();
        assert_eq!(framed, frame, "{record:?}");
    }
}

#[test]
fn encoding_into_a_value_adds_exactly_the_records_own_frame() {
    let mut value = vec![7; 5];
    let mut expected = value.clone();
    for record in every_kind() {
        sagalog::tools::encode_record_into(&mut value, UnixMillis(9), &record).unwrap();
        expected.extend(encode_record(UnixMillis(9), &record).unwrap());
        assert_eq!(value, expected, "{record:?}");
    }
}

#[test]
fn a_record_too_large_to_encode_leaves_the_value_as_it_was() {
    let mut value = encode_record(
        UnixMillis(1),
        &Record::StepStarted(CallRef {
            step: 0,
            attempt: 1,
        }),
    )
    .unwrap();
    let before = value.clone();
    let huge = Record::StepSucceeded(CallSucceeded {
        call: CallRef {
            step: 0,
            attempt: 1,
        },
        output: vec![1; MAX_PAYLOAD + 1],
    });
    let error = sagalog::tools::encode_record_into(&mut value, UnixMillis(2), &huge);
    assert!(
        matches!(error, Err(EncodeError::TooLarge { .. })),
        "{error:?}"
    );
    assert_eq!(value, before);
}

#[test]
fn a_name_is_written_as_the_plain_string_it_holds_and_read_back() {
    // Names are shared, not copied, in memory; the log must not see that.
    let saga_type = encode_value(&SagaType::new("order")).unwrap();
    assert_eq!(saga_type, encode_value("order").unwrap());
    assert_eq!(
        decode_value::<SagaType>(&saga_type).unwrap(),
        SagaType::new("order")
    );
    let step = encode_value(&StepName::new("charge")).unwrap();
    assert_eq!(step, encode_value("charge").unwrap());
    assert_eq!(
        decode_value::<StepName>(&step).unwrap(),
        StepName::new("charge")
    );
}

#[test]
fn every_record_kind_frames_exactly_the_bincode_bytes_of_its_timestamp_and_body() {
    for record in every_kind() {
        let frame = encode_record(UnixMillis(9), &record).unwrap();
        let payload = &frame[HEADER_LEN..];
        let declared = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
        assert_eq!(declared, payload.len());
        // The payload is bincode's `(at, body)`, nothing more or less.
        let expected = match &record {
            Record::SagaStarted(b) => encode_value(&(9u64, b)),
            Record::StepStarted(b)
            | Record::CompensationStarted(b)
            | Record::CompensationSucceeded(b)
            | Record::ConfirmStarted(b)
            | Record::ConfirmSucceeded(b) => encode_value(&(9u64, b)),
            Record::StepSucceeded(b) => encode_value(&(9u64, b)),
            Record::StepFailed(b) | Record::CompensationFailed(b) | Record::ConfirmFailed(b) => {
                encode_value(&(9u64, b))
            }
            Record::Decided(b) => encode_value(&(9u64, b)),
            Record::SagaSuspended(b) => encode_value(&(9u64, b)),
            Record::SagaFinished(b) => encode_value(&(9u64, b)),
            Record::TimerSet(b) => encode_value(&(9u64, b)),
            Record::OperatorAction(b) => encode_value(&(9u64, b)),
            other => panic!("every_kind has a record kind this test does not cover: {other:?}"),
        }
        .unwrap();
        assert_eq!(payload, expected.as_slice(), "{record:?}");
    }
}

#[test]
fn an_oversized_record_is_refused_at_encoding() {
    let Record::SagaStarted(mut start) = every_kind().remove(0) else {
        panic!("every_kind starts with a start record");
    };
    start.input = vec![0u8; MAX_PAYLOAD + 1];
    assert!(matches!(
        encode_record(UnixMillis(1), &Record::SagaStarted(start)),
        Err(EncodeError::TooLarge { .. })
    ));
}
