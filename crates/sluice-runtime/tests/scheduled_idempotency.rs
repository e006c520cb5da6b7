//! The idempotency checker (`sluice-testing`) runs a scheduled job's handler under
//! duplicates and crashes: the ticks of a schedule, produced twice for one tick (two
//! replicas whose tick stores do not meet, as after a lapsed claim), are handled by a
//! handler keyed by the tick's job id. With its inbox it is idempotent; without, the
//! checker finds the double effect.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_core::dedup::Claims;
use sluice_core::{Backend, BoxError, Delivery, Message, MessageId, Subscriber, SubscriptionName};
use sluice_memory::MemoryBackend;
use sluice_runtime::schedule::Schedule;
use sluice_runtime::{decode_json, Job, Jobs};
use sluice_testing::{CheckError, Checker, Faults, FindingKind, Subject};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct DailyTotals {
    ledger: String,
}

impl Job for DailyTotals {
    const NAME: &'static str = "daily-totals";
}

/// The handler's database: one totals row per (ledger, tick), and the inbox of handled ids.
#[derive(Clone, Default)]
struct Tables {
    rows: BTreeMap<String, u32>,
    inbox: BTreeSet<MessageId>,
}

#[derive(Default)]
struct Totals {
    committed: Tables,
    without_inbox: bool,
}

impl Subject for Totals {
    type State = BTreeMap<String, u32>;

    async fn reset(&mut self) -> Result<(), BoxError> {
        self.committed = Tables::default();
        Ok(())
    }

    async fn handle(&mut self, message: &Message, faults: &Faults) -> Result<(), BoxError> {
        let job: DailyTotals = decode_json(message)?;
        let mut tx = self.committed.clone();
        if !self.without_inbox && !tx.inbox.insert(message.id().clone()) {
            return Ok(());
        }
        faults.point("after inbox insert")?;
        // The tick is in the job's id (`schedule-<id>-<ms>`): one row per tick.
        let tick = message.id().as_str().rsplit('-').next().unwrap_or_default();
        *tx.rows.entry(format!("{}@{tick}", job.ledger)).or_default() += 1;
        faults.point("before commit")?;
        self.committed = tx;
        Ok(())
    }

    async fn state(&mut self) -> Result<Self::State, BoxError> {
        Ok(self.committed.rows.clone())
    }
}

/// The jobs of three ticks, each tick produced by two replicas that do not share a tick
/// store: six messages, two of each tick id.
async fn tick_jobs() -> Vec<Message> {
    let backend = MemoryBackend::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = UNIX_EPOCH + Duration::from_secs((now - 3 * 86_400) / 86_400 * 86_400);
    let schedule = Schedule::every(Duration::from_secs(86_400)).unwrap();
    for _ in 0..2 {
        let clock = Arc::new(std::sync::Mutex::new(base));
        let reading = clock.clone();
        let jobs = Jobs::new(backend.clone())
            .await
            .unwrap()
            .tick_store(Arc::new(Claims::default()))
            .clock(move || *reading.lock().unwrap());
        let job = DailyTotals {
            ledger: "eu".into(),
        };
        jobs.schedule("daily-totals", schedule.clone(), &job)
            .await
            .unwrap();
        for day in 0..3 {
            *clock.lock().unwrap() = base + Duration::from_secs(day * 86_400);
            jobs.produce_due().await.unwrap();
        }
    }
    let subscriber = backend
        .subscribe(&SubscriptionName::new(DailyTotals::NAME).unwrap())
        .await
        .unwrap();
    let mut messages = Vec::new();
    while messages.len() < 6 {
        let got = subscriber
            .receive(10, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!got.is_empty(), "only {} tick jobs arrived", messages.len());
        for d in got {
            messages.push(d.message().clone());
            d.ack().await.unwrap();
        }
    }
    messages
}

#[tokio::test]
async fn a_scheduled_jobs_handler_keyed_by_its_tick_id_is_idempotent_under_duplicates_and_crashes()
{
    let messages = tick_jobs().await;
    let ids: BTreeSet<&str> = messages.iter().map(|m| m.id().as_str()).collect();
    assert_eq!(
        ids.len(),
        3,
        "two copies of each of three ticks, one id per tick"
    );

    let report = Checker::new()
        .seed(19)
        .check(&mut Totals::default(), &messages)
        .await
        .unwrap();
    assert!(report.duplicates > 0, "{report}");

    let mut buggy = Totals {
        without_inbox: true,
        ..Totals::default()
    };
    match Checker::new().seed(19).check(&mut buggy, &messages).await {
        Err(CheckError::Mismatch(finding)) => {
            assert_eq!(finding.kind, FindingKind::DoubleEffect, "{finding}");
        }
        other => panic!("the checker must find the double effect: {other:?}"),
    }
}
