//! A seeded simulation of the engine over crash-simulating, fault-injecting storage, checked
//! against a simple model (docs/durability.md):
//!
//! - every confirmed publish is, for each subscription, acked, in the DLQ, purged, or still
//!   delivered at the end;
//! - a message whose ack was confirmed is never delivered again (every confirmed write is
//!   durable under `sync = always`);
//! - a publish of an id whose earlier publish was confirmed is a `Duplicate`, and a
//!   `Duplicate` answer only names an id that was published before;
//! - a bit flipped in a record with records after it makes open fail with `Corrupt`, or (in a
//!   sealed segment open trusts through its index) the log reads as long as before: never a
//!   silently shorter log; after `Corrupt`, `repair` salvages every record but the damaged
//!   one and the directory opens.
//!
//! Operations: publishes (batches, ordering keys, delays, repeated ids), receive, ack, retry,
//! release, dead-letter, redrive, purge, extend, checkpoints (also automatic, every few
//! journal records), segment rolls (small segments), delete and re-create of a
//! subscription, swaps and removes in the keyed store (each key holds its last confirmed
//! state, or what an unconfirmed write since left, after every crash), crashes at random points (unsynced writes lost or torn per file), failed
//! writes and syncs. `SLUICE_SIM_SEEDS=N` runs N seeds (2 000 by default);
//! `SLUICE_SIM_SEED=S` replays one; a failure prints the command that replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use sluice_engine::catalog::{Start, SubscriptionOptions, TopicOptions};
use sluice_engine::clock::ManualClock;
use sluice_engine::engine::{Engine, EngineOptions, Leased, Published};
use sluice_engine::io::{FaultyStorage, MemStorage, Storage};
use sluice_engine::log::LogOptions;
use sluice_engine::record::MessageRecord;
use sluice_engine::segment::HEADER_LEN;
use sluice_engine::Error;

use crate::support::{wait, SharedMem, DATA, T0};

const SUBS: [&str; 2] = ["a", "b"];
const TOPIC_DIR: &str = "/data/topics/orders";

/// SplitMix64: small, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the model knows per subscription.
#[derive(Default)]
struct SubModel {
    /// Ids whose ack was confirmed.
    acked: BTreeSet<String>,
    /// Ids confirmed in the DLQ (dead-letter confirmed, not redriven or purged since).
    dlq: BTreeSet<String>,
    /// Ids purged from the DLQ: no longer expected.
    purged: BTreeSet<String>,
    /// Ids whose ack, purge or redrive failed: it may or may not have taken effect (its
    /// journal record may have survived the crash that followed).
    maybe: BTreeSet<String>,
}

#[derive(Default)]
struct Model {
    /// Ids whose publish was confirmed `Stored`.
    confirmed: BTreeSet<String>,
    /// Ids published without a confirmation (they may or may not exist).
    maybe: BTreeSet<String>,
    subs: BTreeMap<&'static str, SubModel>,
    /// The keyed store, by key.
    kv: BTreeMap<String, KvModel>,
}

/// One key of the keyed store: its last confirmed state, and what writes that failed (and
/// so may or may not have reached the disk) since then would have left.
#[derive(Debug, Default)]
struct KvModel {
    /// `(value, version)`, or `None` when absent.
    confirmed: Option<(String, u64)>,
    /// Values of unconfirmed writes (`None`: an unconfirmed remove).
    maybe: BTreeSet<Option<String>>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    mem: Arc<MemStorage>,
    /// This incarnation's view of `mem`: broken for good at a crash, so threads of the dead
    /// engine (a checkpoint in progress) can never write into the next one's files, as the
    /// threads of a killed process cannot.
    faulty: Arc<FaultyStorage<SharedMem>>,
    clock: Arc<ManualClock>,
    engine: Option<Engine>,
    leased: Vec<(&'static str, Leased)>,
    model: Model,
    next_id: u64,
    crashes: u64,
}

impl Sim {
    fn mem(&self) -> &MemStorage {
        &self.mem
    }

    fn options(&self) -> EngineOptions {
        EngineOptions::default()
            .storage(self.faulty.clone())
            .clock(self.clock.clone())
            .log(
                LogOptions::default()
                    .segment_size(2048)
                    .index_interval_bytes(256),
            )
            .checkpoint_every(5)
            .maintenance_interval(None)
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "simulation seed {} failed: {what}\nreplay it with: SLUICE_SIM_SEED={} cargo test -p sluice-engine --test engine simulation -- --nocapture",
            self.seed, self.seed
        );
    }

    fn trace(&self, what: std::fmt::Arguments<'_>) {
        if std::env::var_os("SLUICE_SIM_TRACE").is_some() {
            eprintln!("{what}");
        }
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("the engine is open")
    }

    fn open(&mut self) {
        match Engine::open(DATA, self.options()) {
            Ok(engine) => self.engine = Some(engine),
            Err(err) => self.fail(format!("reopen after a crash failed: {err}")),
        }
    }

    fn crash(&mut self) {
        self.trace(format_args!("crash"));
        self.crashes += 1;
        self.leased.clear();
        if let Some(engine) = self.engine.take() {
            // A crash: what was not synced is lost or torn, file by file.
            self.faulty.break_now();
            let seed = self.rng.next();
            self.mem().crash_torn(seed);
            drop(engine);
            self.faulty = Arc::new(FaultyStorage::new(SharedMem(self.mem.clone())));
        }
        self.open();
        self.check_kv();
    }

    /// A swap over the version read, or a remove, of one of a few keys of the keyed store.
    fn kv(&mut self) {
        let engine = self.engine().clone();
        let key = format!("job/{}", self.rng.below(6));
        let current = match engine.kv_get(&key) {
            Ok(entry) => entry.map(|e| e.version),
            Err(err) => self.fail(format!("kv_get {key}: {err}")),
        };
        if let (Some(version), true) = (current, self.rng.chance(25)) {
            let removed = wait(|done| engine.kv_remove(&key, version, done));
            self.trace(format_args!("kv remove {key} at {version}: {removed:?}"));
            let model = self.model.kv.entry(key.clone()).or_default();
            match removed {
                Ok(true) => *model = KvModel::default(),
                Ok(false) => self.fail(format!("remove of {key} at its current version refused")),
                Err(_) => {
                    model.maybe.insert(None);
                }
            }
            return;
        }
        self.next_id += 1;
        let value = format!("v{}", self.next_id);
        let swapped =
            wait(|done| engine.kv_swap(&key, current, value.as_bytes(), 86_400_000, done));
        self.trace(format_args!(
            "kv swap {key} over {current:?} = {value}: {swapped:?}"
        ));
        let model = self.model.kv.entry(key.clone()).or_default();
        match swapped {
            Ok(Some(version)) => {
                *model = KvModel {
                    confirmed: Some((value, version)),
                    maybe: BTreeSet::new(),
                };
            }
            Ok(None) => self.fail(format!("swap of {key} over its current version refused")),
            Err(_) => {
                model.maybe.insert(Some(value));
            }
        }
    }

    /// After a reopen: each key holds its last confirmed state or what an unconfirmed write
    /// since would have left; what it holds is durable from now on.
    fn check_kv(&mut self) {
        let engine = self.engine().clone();
        let mut found_all = BTreeMap::new();
        for key in self.model.kv.keys() {
            match engine.kv_get(key) {
                Ok(found) => {
                    found_all.insert(key.clone(), found);
                }
                Err(err) => self.fail(format!("kv_get {key} after reopen: {err}")),
            }
        }
        for (key, found) in found_all {
            let model = &self.model.kv[&key];
            let value = found
                .as_ref()
                .map(|e| String::from_utf8_lossy(&e.value).into_owned());
            let as_confirmed = match (&model.confirmed, &found) {
                (Some((v, version)), Some(e)) => {
                    *v == value.clone().unwrap_or_default() && *version == e.version
                }
                (None, None) => true,
                _ => false,
            };
            if !as_confirmed && !model.maybe.contains(&value) {
                self.fail(format!(
                    "keyed store: {key} holds {value:?} after a crash; confirmed {:?}, unconfirmed {:?}",
                    model.confirmed, model.maybe
                ));
            }
            self.model.kv.insert(
                key,
                KvModel {
                    confirmed: found.map(|e| (value.unwrap_or_default(), e.version)),
                    maybe: BTreeSet::new(),
                },
            );
        }
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("m{}", self.next_id)
    }

    fn publish(&mut self) {
        let n = 1 + self.rng.below(3);
        let mut records = Vec::new();
        for _ in 0..n {
            // Sometimes an id published before (a producer retrying).
            let id = if self.rng.chance(15) && !self.model.confirmed.is_empty() {
                let pick = self.rng.below(self.model.confirmed.len() as u64) as usize;
                self.model.confirmed.iter().nth(pick).unwrap().clone()
            } else if self.rng.chance(10) && !self.model.maybe.is_empty() {
                self.model.maybe.iter().next().unwrap().clone()
            } else {
                self.new_id()
            };
            let mut record = MessageRecord {
                id,
                payload: vec![self.rng.below(256) as u8; self.rng.below(300) as usize].into(),
                ..MessageRecord::default()
            };
            if self.rng.chance(30) {
                record.ordering_key = Some(format!("k{}", self.rng.below(3)));
            }
            if self.rng.chance(15) {
                record.deliver_at_ms = self.clock_now() + self.rng.below(5_000);
            }
            records.push(record);
        }
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let before: BTreeSet<String> = ids
            .iter()
            .filter(|id| self.model.confirmed.contains(*id))
            .cloned()
            .collect();
        let known: BTreeSet<String> = self
            .model
            .confirmed
            .union(&self.model.maybe)
            .cloned()
            .collect();
        let result = wait(|done| self.engine().publish("orders", records, done));
        match result {
            Ok(outcomes) => {
                let mut seen = BTreeSet::new();
                for (id, outcome) in ids.iter().zip(outcomes) {
                    match outcome {
                        Ok(Published::Stored { .. }) => {
                            if before.contains(id) {
                                self.fail(format!("{id} was confirmed before but stored again"));
                            }
                            self.model.maybe.remove(id);
                            self.model.confirmed.insert(id.clone());
                        }
                        Ok(Published::Duplicate) => {
                            if !known.contains(id) && !seen.contains(id) {
                                self.fail(format!(
                                    "{id} answered Duplicate but was never published"
                                ));
                            }
                        }
                        Err(_) => {
                            if !self.model.confirmed.contains(id) {
                                self.model.maybe.insert(id.clone());
                            }
                        }
                    }
                    seen.insert(id.clone());
                }
            }
            Err(_) => {
                for id in ids {
                    if !self.model.confirmed.contains(&id) {
                        self.model.maybe.insert(id);
                    }
                }
            }
        }
    }

    fn clock_now(&self) -> u64 {
        self.engine().now_ms()
    }

    fn receive(&mut self) {
        let sub = SUBS[self.rng.below(2) as usize];
        let max = 1 + self.rng.below(4) as usize;
        let Ok(leases) = wait(|done| self.engine().receive(sub, 1, max, done)) else {
            return;
        };
        for lease in leases {
            let id = &lease.record.id;
            self.trace(format_args!(
                "received {sub} {id} attempt {}",
                lease.attempt
            ));
            if lease.record.is_lost() {
                self.fail(format!("a placeholder was delivered to {sub}: {id}"));
            }
            if self.model.subs[sub].acked.contains(id) {
                self.fail(format!(
                    "{id} was acked by {sub} (confirmed) and delivered again"
                ));
            }
            if !self.model.confirmed.contains(id) && !self.model.maybe.contains(id) {
                self.fail(format!("{id} delivered to {sub} but never published"));
            }
            self.leased.push((sub, lease));
        }
    }

    fn settle(&mut self) {
        if self.leased.is_empty() {
            return;
        }
        let i = self.rng.below(self.leased.len() as u64) as usize;
        let (sub, lease) = self.leased.swap_remove(i);
        let engine = self.engine().clone();
        let id = lease.record.id.clone();
        let verb = self.rng.below(6);
        self.trace(format_args!("settle {sub} {id} verb {verb}"));
        match verb {
            0 | 1 => {
                let model = self.model.subs.get_mut(sub).unwrap();
                let acked = wait(|done| engine.ack(sub, lease.r, lease.token, done));
                if std::env::var_os("SLUICE_SIM_TRACE").is_some() {
                    eprintln!("  ack -> {acked:?}");
                }
                if acked.is_ok() {
                    model.acked.insert(id);
                } else {
                    model.maybe.insert(id);
                }
            }
            2 => {
                let after = self.rng.below(3_000);
                let _ = wait(|done| engine.retry(sub, lease.r, lease.token, after, done));
            }
            3 => {
                let _ = wait(|done| engine.release(sub, lease.r, lease.token, done));
            }
            4 => {
                let record = lease.record.clone();
                let dead = wait(|done| {
                    engine.dead_letter(
                        sub,
                        lease.r,
                        lease.token,
                        Box::new(move |_, _| record),
                        done,
                    )
                });
                if std::env::var_os("SLUICE_SIM_TRACE").is_some() {
                    eprintln!("  dead-letter -> {dead:?}");
                }
                let model = self.model.subs.get_mut(sub).unwrap();
                if dead.is_ok() {
                    model.dlq.insert(id);
                } else {
                    // Perhaps in the DLQ, and then perhaps purged later.
                    model.maybe.insert(id);
                }
            }
            _ => {
                if engine.extend(sub, lease.r, lease.token, 30_000).is_ok() {
                    self.leased.push((sub, lease));
                }
            }
        }
    }

    fn dlq_tools(&mut self) {
        let sub = SUBS[self.rng.below(2) as usize];
        let engine = self.engine().clone();
        if self.rng.chance(70) {
            let Some(id) = self.model.subs[sub].dlq.iter().next().cloned() else {
                return;
            };
            let id2 = id.clone();
            let redriven = wait(|done| engine.dlq_redrive(sub, &id2, done));
            self.trace(format_args!("redrive {sub} {id} -> {redriven:?}"));
            match redriven {
                Ok(found) => {
                    if !found {
                        self.fail(format!(
                            "{id} is in {sub}'s DLQ (confirmed) but redrive did not find it"
                        ));
                    }
                    self.model.subs.get_mut(sub).unwrap().dlq.remove(&id);
                }
                Err(_) => {
                    let model = self.model.subs.get_mut(sub).unwrap();
                    model.dlq.remove(&id);
                    model.maybe.insert(id);
                }
            }
        } else {
            let purged = wait(|done| engine.dlq_purge(sub, done));
            self.trace(format_args!("purge {sub} -> {purged:?}"));
            let purged = purged.is_ok();
            let model = self.model.subs.get_mut(sub).unwrap();
            let dlq = std::mem::take(&mut model.dlq);
            if purged {
                model.purged.extend(dlq);
            } else {
                model.maybe.extend(dlq);
            }
        }
    }

    fn recreate_b(&mut self) {
        let engine = self.engine().clone();
        let deleted = engine.delete_subscription("b");
        self.trace(format_args!("delete b -> {deleted:?}"));
        if deleted.is_err() {
            return;
        }
        self.leased.retain(|(sub, _)| *sub != "b");
        self.model.subs.insert("b", SubModel::default());
        let mut options = SubscriptionOptions::new("orders");
        options.start = Start::Earliest;
        options.max_attempts = 1_000;
        if let Err(err) = engine.create_subscription("b", options) {
            if std::env::var_os("SLUICE_SIM_TRACE").is_some() {
                eprintln!("re-create of b failed: {err}");
            }
        }
    }

    fn fault(&mut self) {
        if self.rng.chance(50) {
            self.faulty.fail_nth_write(1 + self.rng.below(3));
        } else {
            self.faulty.fail_nth_sync(1 + self.rng.below(3));
        }
    }

    /// Creates `b` again if a fault cut its re-creation short.
    fn ensure_b(&mut self) {
        let engine = self.engine().clone();
        if engine.subscription("b").is_ok() {
            return;
        }
        self.trace(format_args!("ensure b: creating it"));
        self.model.subs.insert("b", SubModel::default());
        let mut options = SubscriptionOptions::new("orders");
        options.start = Start::Earliest;
        options.max_attempts = 1_000;
        let _ = engine.create_subscription("b", options);
    }

    fn step(&mut self) {
        self.ensure_b();
        let op = self.rng.below(100);
        if std::env::var_os("SLUICE_SIM_TRACE").is_some() {
            eprintln!(
                "op {op} leased {} b-acked {:?} b-dlq {:?}",
                self.leased.len(),
                self.model.subs["b"].acked,
                self.model.subs["b"].dlq
            );
        }
        match op {
            0..=29 => self.publish(),
            30..=54 => self.receive(),
            55..=79 => self.settle(),
            80..=83 => self.dlq_tools(),
            84..=86 => {
                let sub = SUBS[self.rng.below(2) as usize];
                let _ = self.engine().checkpoint(sub);
            }
            87..=88 => self.recreate_b(),
            89..=90 => self.clock.advance(self.rng.below(4_000)),
            91..=93 => self.kv(),
            94..=95 => self.fault(),
            _ => self.crash(),
        }
        if self.engine().poisoned().is_some() {
            self.crash();
        }
    }

    /// After the run: reopen, let every timer run out, drain both subscriptions and check
    /// that every confirmed message is accounted for.
    fn check_final(&mut self) {
        self.faulty.fail_nth_write(0);
        self.faulty.fail_nth_sync(0);
        self.crash();
        self.clock.advance(10 * 60_000);
        self.ensure_b();
        let engine = self.engine().clone();
        for sub in SUBS {
            let mut delivered = BTreeSet::new();
            loop {
                let leases = match wait(|done| engine.receive(sub, 1, 1000, done)) {
                    Ok(leases) => leases,
                    Err(err) => self.fail(format!("final receive of {sub} failed: {err}")),
                };
                if leases.is_empty() {
                    break;
                }
                for lease in leases {
                    let id = lease.record.id.clone();
                    if self.model.subs[sub].acked.contains(&id) {
                        self.fail(format!("{id} was acked by {sub} and came back at the end"));
                    }
                    if let Err(err) = wait(|done| engine.ack(sub, lease.r, lease.token, done)) {
                        self.fail(format!("final ack failed: {err}"));
                    }
                    delivered.insert(id);
                }
            }
            let in_dlq: BTreeSet<String> = engine
                .dlq_list(sub, 100_000)
                .unwrap()
                .into_iter()
                .map(|m| m.id)
                .collect();
            let model = &self.model.subs[sub];
            for id in &self.model.confirmed {
                let found = model.acked.contains(id)
                    || delivered.contains(id)
                    || in_dlq.contains(id)
                    || model.purged.contains(id)
                    || model.maybe.contains(id);
                if !found {
                    let log: Vec<String> = (0..200)
                        .filter_map(|o| engine.read("orders", o).ok().flatten())
                        .map(|m| format!("{}:{}:{:?}", m.offset, m.id, m.ordering_key))
                        .collect();
                    self.fail(format!(
                        "{id} was confirmed but {sub} neither acked it, nor has it in its DLQ, nor delivers it (delivered at the end {delivered:?}, DLQ {in_dlq:?}, stats {:?}, log {log:?})",
                        engine.stats(sub)
                    ));
                }
            }
            for id in &model.dlq {
                if !in_dlq.contains(id) {
                    self.fail(format!(
                        "{id} was dead-lettered by {sub} (confirmed) but is not in its DLQ"
                    ));
                }
            }
        }
    }

    /// Flips a bit inside a record of the topic's active segment that has records after it:
    /// open must refuse. The bit is flipped back afterwards.
    fn check_flip(&mut self) {
        let engine = self.engine.take().expect("open");
        let end_before = readable(&engine);
        let real_before = real_records(&engine, end_before);
        engine.close().ok();
        drop(engine);
        // The topic log, or subscription a's journal (whose records may end in zeros).
        let dir = if self.rng.chance(50) {
            TOPIC_DIR
        } else {
            "/data/subscriptions/a/journal"
        };
        let mut names: Vec<String> = self
            .mem()
            .list_dir(Path::new(dir))
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        let Some(active) = names.last().map(|n| Path::new(dir).join(n)) else {
            return self.open();
        };
        let bytes = self.mem().file_bytes(&active).unwrap();
        let mut frames = Vec::new();
        let mut pos = HEADER_LEN as usize;
        while pos + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            frames.push((pos, len));
            pos += 8 + len;
        }
        if frames.len() < 2 {
            return self.open();
        }
        let (at, len) = frames[self.rng.below(frames.len() as u64 - 1) as usize];
        let target = at + 8 + self.rng.below(len as u64) as usize;
        let original = bytes[target];
        self.mem()
            .corrupt(&active, target as u64, &[original ^ 0x04]);
        match Engine::open(DATA, self.options()) {
            Err(Error::Corrupt { .. }) => {
                // Salvage: exactly the damaged record is lost, every other one is kept.
                let storage: Arc<dyn Storage> = self.faulty.clone();
                if let Err(err) = sluice_engine::check::repair_with(
                    storage,
                    Path::new(DATA),
                    false,
                    self.options(),
                ) {
                    self.fail(format!("repair after a flipped bit failed: {err}"));
                }
                let engine = match Engine::open(DATA, self.options()) {
                    Ok(engine) => engine,
                    Err(err) => self.fail(format!("open after repair failed: {err}")),
                };
                let kept = real_records(&engine, end_before);
                engine.close().ok();
                if dir == TOPIC_DIR && kept + 1 < real_before {
                    self.fail(format!(
                        "repair kept {kept} of {real_before} records after one flipped bit"
                    ));
                }
                return self.open();
            }
            // Open may trust a sealed segment's index (the flip is then found at the read of
            // that record): the log must not be silently shorter.
            Ok(engine) => {
                let end = readable(&engine);
                engine.close().ok();
                if end < end_before {
                    self.fail(format!(
                        "a flipped bit at byte {target} of {} made the log silently shorter: {end} records readable, {end_before} before",
                        active.display()
                    ));
                }
            }
            Err(other) => self.fail(format!("a flipped bit gave {other}, not Corrupt")),
        }
        self.mem().corrupt(&active, target as u64, &[original]);
        self.open();
    }
}

/// How many records of the topic read back, from offset 0 on, before the first that does not.
fn readable(engine: &Engine) -> u64 {
    (0..)
        .take_while(|o| engine.read("orders", *o).is_ok_and(|m| m.is_some()))
        .count() as u64
}

/// How many of the topic's records below `end` are messages (not placeholders of lost ones).
fn real_records(engine: &Engine, end: u64) -> u64 {
    (0..end)
        .filter(|&o| {
            engine
                .read("orders", o)
                .ok()
                .flatten()
                .is_some_and(|m| !m.is_lost())
        })
        .count() as u64
}

fn run(seed: u64) -> (u64, u64) {
    let mem = Arc::new(MemStorage::new());
    let faulty = Arc::new(FaultyStorage::new(SharedMem(mem.clone())));
    let clock = Arc::new(ManualClock::new(T0));
    let mut sim = Sim {
        seed,
        rng: Rng(seed),
        mem,
        faulty,
        clock,
        engine: None,
        leased: Vec::new(),
        model: Model::default(),
        next_id: 0,
        crashes: 0,
    };
    sim.model.subs.insert("a", SubModel::default());
    sim.model.subs.insert("b", SubModel::default());
    sim.open();
    let engine = sim.engine().clone();
    engine
        .create_topic(
            "orders",
            TopicOptions::default().dedup_window_ms(Some(24 * 3_600_000)),
        )
        .unwrap();
    for sub in SUBS {
        let mut options = SubscriptionOptions::new("orders");
        options.start = Start::Earliest;
        options.max_attempts = 1_000;
        engine.create_subscription(sub, options).unwrap();
    }
    drop(engine);
    let steps = 40 + sim.rng.below(80);
    for _ in 0..steps {
        sim.step();
    }
    sim.check_final();
    sim.check_flip();
    (steps, sim.crashes)
}

#[test]
fn given_random_operations_crashes_and_faults_when_checked_against_the_model_then_no_confirmed_message_is_lost(
) {
    let seeds: Vec<u64> = match std::env::var("SLUICE_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SLUICE_SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("SLUICE_SIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2_000u64);
            let base = std::env::var("SLUICE_SIM_BASE")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0u64);
            (base..base + count).collect()
        }
    };
    let (mut steps, mut crashes) = (0, 0);
    for &seed in &seeds {
        let (s, c) = run(seed);
        steps += s;
        crashes += c;
    }
    eprintln!(
        "simulation: {} seeds, {steps} operations, {crashes} crashes",
        seeds.len()
    );
}
