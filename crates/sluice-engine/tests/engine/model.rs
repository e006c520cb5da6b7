//! The engine against a plain in-memory model, through random sequences of publish,
//! receive, ack, retry, release, time passing (leases expire), checkpoints, retention and
//! restarts (a clean close, or a power cut with a publish in flight).
//!
//! The model is the specification in a few lines: messages by offset; per message whether it
//! is acked, its current lease (token, deadline, attempt), the attempt its next delivery
//! gets and when a retry is due. A receive leases the deliverable messages with the lowest
//! offsets; a lease ends at its deadline; a retry or an expiry makes the next delivery
//! `attempt + 1`, a release keeps the attempt; a restart ends every lease. Checked after
//! every step: what receive hands out (offsets, attempts, ids), whether a verb succeeds,
//! the counters, and after every restart the log itself: no confirmed message lost, none
//! twice, nothing unacked deleted by retention.

use std::sync::mpsc;
use std::sync::Arc;

use proptest::prelude::*;
use sluice_engine::catalog::{Start, SubscriptionOptions, TopicOptions};
use sluice_engine::clock::{Clock, ManualClock};
use sluice_engine::engine::{Engine, EngineOptions, Leased};
use sluice_engine::io::MemStorage;
use sluice_engine::log::LogOptions;
use sluice_engine::subscription::Ref;
use sluice_engine::Error;

use crate::support::*;

const LEASE_MS: u64 = 1000;
const SUB: &str = "billing";
const TOPIC: &str = "orders";

#[derive(Debug, Clone)]
enum Op {
    Publish(usize),
    Receive(usize),
    /// A verb on the known lease at this index (modulo their number).
    Ack(usize),
    Retry(usize, u64),
    Release(usize),
    Advance(u64),
    Checkpoint,
    Retention,
    Close,
    /// A power cut (torn by the seed, or clean) with a publish of this many messages in
    /// flight (0: none).
    Crash {
        in_flight: usize,
        torn: Option<u64>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1usize..5).prop_map(Op::Publish),
        5 => (1usize..6).prop_map(Op::Receive),
        4 => any::<usize>().prop_map(Op::Ack),
        2 => (any::<usize>(), 0u64..2500).prop_map(|(i, after)| Op::Retry(i, after)),
        2 => any::<usize>().prop_map(Op::Release),
        3 => (0u64..2500).prop_map(Op::Advance),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Retention),
        1 => Just(Op::Close),
        1 => (0usize..4, proptest::option::of(any::<u64>()))
            .prop_map(|(in_flight, torn)| Op::Crash { in_flight, torn }),
    ]
}

/// What the model knows of one message.
#[derive(Debug, Clone)]
struct Msg {
    id: String,
    acked: bool,
    /// The attempt its next delivery gets.
    next_attempt: u32,
    /// Its current lease: token, deadline, attempt.
    lease: Option<(u64, u64, u32)>,
    /// Not deliverable before this time (a retry).
    due_ms: u64,
}

impl Msg {
    fn new(id: String) -> Self {
        Self {
            id,
            acked: false,
            next_attempt: 1,
            lease: None,
            due_ms: 0,
        }
    }
    fn deliverable(&self, now: u64) -> bool {
        !self.acked
            && self.lease.is_none_or(|(_, deadline, _)| deadline <= now)
            && self.due_ms <= now
    }
    fn holds(&self, token: u64, now: u64) -> bool {
        self.lease
            .is_some_and(|(t, deadline, _)| t == token && now < deadline)
    }
}

/// The engine under test with everything needed to restart it.
struct World {
    storage: Arc<MemStorage>,
    clock: Arc<ManualClock>,
    /// `None` only while it restarts.
    engine: Option<Engine>,
    msgs: Vec<Msg>,
    /// Every lease handed out (stale ones too, to test that their verbs fail).
    leases: Vec<Leased>,
    next_id: u64,
}

fn engine_options(storage: &Arc<MemStorage>, clock: &Arc<ManualClock>) -> EngineOptions {
    // Tiny segments: rolls, sealed segments and retention happen within a few messages.
    options(storage.clone(), clock).log(LogOptions::default().segment_size(512))
}

impl World {
    fn new() -> Self {
        let storage = Arc::new(MemStorage::new());
        let clock = Arc::new(ManualClock::new(T0));
        let engine = Engine::open(DATA, engine_options(&storage, &clock)).unwrap();
        // Retention by age 0: every handled sealed segment goes at each retention pass.
        engine
            .create_topic(TOPIC, TopicOptions::default().retention(Some(0), None))
            .unwrap();
        let mut sub = SubscriptionOptions::new(TOPIC);
        sub.start = Start::Earliest;
        sub.lease_ms = LEASE_MS;
        sub.prefetch = 100_000;
        engine.create_subscription(SUB, sub).unwrap();
        Self {
            storage,
            clock,
            engine: Some(engine),
            msgs: Vec::new(),
            leases: Vec::new(),
            next_id: 0,
        }
    }

    fn engine(&self) -> &Engine {
        self.engine
            .as_ref()
            .expect("the engine is open between steps")
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn fresh_ids(&mut self, count: usize) -> Vec<String> {
        (0..count)
            .map(|_| {
                self.next_id += 1;
                format!("m{}", self.next_id)
            })
            .collect()
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Publish(count) => {
                let ids = self.fresh_ids(count);
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let offsets = publish_ok(self.engine(), TOPIC, &refs);
                let expected: Vec<u64> =
                    (self.msgs.len() as u64..(self.msgs.len() + count) as u64).collect();
                prop_assert_eq!(offsets, expected, "offsets are dense, in publish order");
                self.msgs.extend(ids.into_iter().map(Msg::new));
            }
            Op::Receive(max) => self.receive(max)?,
            Op::Ack(i) | Op::Retry(i, _) | Op::Release(i) => self.verb(op, i)?,
            Op::Advance(ms) => self.clock.advance(ms),
            Op::Checkpoint => {
                self.engine().checkpoint(SUB).unwrap();
            }
            Op::Retention => {
                self.engine().enforce_retention().unwrap();
                self.check_log()?;
            }
            Op::Close => {
                self.engine().close().unwrap();
                self.reopen()?;
            }
            Op::Crash { in_flight, torn } => self.crash(in_flight, torn)?,
        }
        self.check_stats()
    }

    fn receive(&mut self, max: usize) -> Result<(), TestCaseError> {
        let now = self.now();
        let leased = receive(self.engine(), SUB, 1, max).unwrap();
        let expected: Vec<(u64, u32)> = self
            .msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| m.deliverable(now))
            .take(max)
            .map(|(offset, m)| (offset as u64, m.next_attempt))
            .collect();
        let got: Vec<(u64, u32)> = leased
            .iter()
            .map(|l| match l.r {
                Ref::Topic(offset) => (offset, l.attempt),
                Ref::Dlq(offset) => (u64::MAX - offset, l.attempt),
            })
            .collect();
        prop_assert_eq!(
            &got,
            &expected,
            "receive hands out the deliverable messages with the lowest offsets, with the model's attempts"
        );
        for lease in leased {
            let Ref::Topic(offset) = lease.r else {
                unreachable!("checked above");
            };
            let msg = &mut self.msgs[offset as usize];
            prop_assert_eq!(
                &lease.record.id,
                &msg.id,
                "offset {} holds its message",
                offset
            );
            prop_assert_eq!(
                lease.deadline_ms,
                now + LEASE_MS,
                "the lease runs for lease_ms"
            );
            msg.lease = Some((lease.token, lease.deadline_ms, lease.attempt));
            msg.next_attempt = lease.attempt + 1;
            msg.due_ms = 0;
            self.leases.push(lease);
        }
        Ok(())
    }

    fn verb(&mut self, op: &Op, index: usize) -> Result<(), TestCaseError> {
        if self.leases.is_empty() {
            return Ok(());
        }
        let lease = self.leases[index % self.leases.len()].clone();
        let Ref::Topic(offset) = lease.r else {
            unreachable!("only topic messages are leased here");
        };
        let now = self.now();
        let valid = self.msgs[offset as usize].holds(lease.token, now);
        let engine = self.engine();
        let result = match *op {
            Op::Ack(_) => ack(engine, SUB, &lease),
            Op::Retry(_, after) => {
                wait(|done| engine.retry(SUB, lease.r, lease.token, after, done))
            }
            _ => wait(|done| engine.release(SUB, lease.r, lease.token, done)),
        };
        let msg = &mut self.msgs[offset as usize];
        match (valid, result) {
            (true, Ok(())) => {
                let attempt = msg.lease.take().map_or(0, |(_, _, attempt)| attempt);
                match *op {
                    Op::Ack(_) => msg.acked = true,
                    Op::Retry(_, after) => msg.due_ms = now + after,
                    _ => msg.next_attempt = attempt,
                }
            }
            (false, Err(Error::LeaseLost { .. })) => {}
            (valid, result) => {
                prop_assert!(
                    false,
                    "{:?} on offset {} (lease valid in the model: {}) gave {:?}",
                    op,
                    offset,
                    valid,
                    result
                );
            }
        }
        Ok(())
    }

    fn crash(&mut self, in_flight: usize, torn: Option<u64>) -> Result<(), TestCaseError> {
        let ids = self.fresh_ids(in_flight);
        let (sender, confirmed) = mpsc::sync_channel(1);
        if in_flight > 0 {
            let records = ids.iter().map(|id| record(id)).collect();
            self.engine().publish(
                TOPIC,
                records,
                Box::new(move |result| {
                    let _ = sender.send(result.is_ok());
                }),
            );
        }
        match torn {
            Some(seed) => self.storage.crash_torn(seed),
            None => self.storage.crash(),
        }
        // Dropping the engine stops its flusher, which completes the publish either way.
        self.engine = None;
        let confirmed = in_flight > 0 && confirmed.try_recv().unwrap_or(false);
        self.reopen_with_in_flight(&ids, confirmed)
    }

    fn reopen(&mut self) -> Result<(), TestCaseError> {
        self.reopen_with_in_flight(&[], false)
    }

    /// Reopens on the same storage: every lease ends; the messages of a publish in flight at
    /// a crash that survived (a prefix of it, all of it if it was confirmed) join the model.
    fn reopen_with_in_flight(
        &mut self,
        in_flight: &[String],
        confirmed: bool,
    ) -> Result<(), TestCaseError> {
        self.engine = Some(
            Engine::open(DATA, engine_options(&self.storage, &self.clock))
                .map_err(|err| TestCaseError::fail(format!("the engine reopens: {err}")))?,
        );
        for msg in &mut self.msgs {
            msg.lease = None;
        }
        let base = self.msgs.len() as u64;
        let survivors: Vec<String> = (base..base + in_flight.len() as u64 + 1)
            .map_while(|offset| self.engine().read(TOPIC, offset).unwrap())
            .map(|record| record.id)
            .collect();
        prop_assert!(
            in_flight.starts_with(&survivors),
            "what survived of the publish in flight is a prefix of it: {:?} of {:?}",
            survivors,
            in_flight
        );
        if confirmed {
            prop_assert_eq!(
                survivors.len(),
                in_flight.len(),
                "a confirmed publish survives whole"
            );
        }
        self.msgs.extend(survivors.into_iter().map(Msg::new));
        self.check_log()
    }

    /// The log holds exactly the model's messages at their offsets, except acked ones that
    /// retention deleted, and nothing after them.
    fn check_log(&self) -> Result<(), TestCaseError> {
        for (offset, msg) in self.msgs.iter().enumerate() {
            match self.engine().read(TOPIC, offset as u64).unwrap() {
                Some(record) => prop_assert_eq!(&record.id, &msg.id, "offset {}", offset),
                None => prop_assert!(
                    msg.acked,
                    "offset {} ({}) is gone but was never acked",
                    offset,
                    msg.id
                ),
            }
        }
        prop_assert!(
            self.engine()
                .read(TOPIC, self.msgs.len() as u64)
                .unwrap()
                .is_none(),
            "nothing after the model's messages"
        );
        Ok(())
    }

    /// The counters agree with the model: leases in flight exactly; every other unsettled
    /// message is ready or delayed (`ready` may count a delayed one the cursor has not seen
    /// since a restart).
    fn check_stats(&self) -> Result<(), TestCaseError> {
        let now = self.now();
        let stats = self.engine().stats(SUB).unwrap();
        let in_flight = self
            .msgs
            .iter()
            .filter(|m| m.lease.is_some_and(|(_, deadline, _)| now < deadline))
            .count() as u64;
        let unsettled = self.msgs.iter().filter(|m| !m.acked).count() as u64;
        prop_assert_eq!(stats.in_flight, in_flight, "leases in flight");
        prop_assert_eq!(
            stats.ready + stats.delayed + stats.in_flight,
            unsettled,
            "unsettled messages: {:?}",
            stats
        );
        Ok(())
    }

    /// At the end: after every lease and retry is over, one receive hands out every
    /// unacked message once, with its attempt.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.clock.advance(10 * LEASE_MS);
        self.receive(100_000)?;
        self.check_log()?;
        self.engine().close().unwrap();
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_engine_behaves_like_the_model_through_publishes_verbs_time_and_restarts(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        let mut world = World::new();
        for op in &ops {
            world.step(op)?;
        }
        world.finish()?;
    }
}
