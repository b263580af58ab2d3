//! Simulated power loss at every sync point: seeded random workloads and every sequence of up
//! to three operations run on the simulated disk with a trace; the trace is then replayed and
//! crashed at every sync boundary (dropping, keeping or tearing the unsynced writes) and at
//! random write points, and each crashed disk is recovered and checked against the model of
//! committed versions (see `sim_workload/mod.rs` for the oracle).
//!
//! `SNAPHEAP_CRASH_POINTS` sets the minimum number of crash points of the random-workload test
//! (default 900); `scripts/crash-points.sh` runs 100,000.

mod common;
mod sim_workload;

use sim_workload::{crash_everywhere, env_count, Op, Plan, Rng, Run, Tally, ALL_OPS};
use snapheap::{PlantedBug, Tracking};
use std::time::Instant;

fn report(name: &str, tally: &Tally, started: Instant) {
    println!(
        "{name}: {} crash points checked ({} of them second crashes of {} recoveries), {} lost or inconsistent \
         states, {:.1} s",
        tally.points,
        tally.points_in_double,
        tally.double,
        tally.failures.len(),
        started.elapsed().as_secs_f64()
    );
    for f in tally.failures.iter().take(10) {
        println!("  {f}");
    }
}

/// Fails the test with the first 20 failures, if any.
fn assert_no_failures(tally: &Tally) {
    assert!(
        tally.failures.is_empty(),
        "{:#?}",
        &tally.failures[..tally.failures.len().min(20)]
    );
}

/// Runs one seeded random workload of `len` operations and crashes it everywhere.
fn random_workload(
    seed: u64,
    len: usize,
    random_writes: usize,
    double_every: usize,
    bug: Option<PlantedBug>,
    tally: &mut Tally,
) {
    random_workload_on(
        Run::create(seed, bug),
        seed,
        len,
        random_writes,
        double_every,
        bug,
        tally,
    );
}

/// [`random_workload`] on a given run; returns the pages the run remapped.
fn random_workload_on(
    mut run: Run,
    seed: u64,
    len: usize,
    random_writes: usize,
    double_every: usize,
    bug: Option<PlantedBug>,
    tally: &mut Tally,
) -> u64 {
    for _ in 0..len {
        let op = Op::random(&mut run.rng);
        run.step(op)
            .unwrap_or_else(|e| panic!("seed {seed}: {op:?} failed without faults: {e}"));
    }
    let mut rng = Rng::new(seed ^ 0xC0FFEE);
    let remapped = run.remapped;
    let (trace, model) = run.finish();
    let plan = Plan {
        random_writes,
        all_modes: true,
        double_every,
        bug,
        ..Plan::default()
    };
    crash_everywhere(&trace, &model, plan, &mut rng, tally);
    remapped
}

#[test]
fn random_workloads_recover_a_committed_state_at_every_crash_point() {
    random_workloads(Tracking::Auto, env_count("SNAPHEAP_CRASH_POINTS", 900));
}

/// The rung matrix: the same campaign with the hashed and all-dirty rungs forced (reduced
/// counts; `SNAPHEAP_CRASH_POINTS_MATRIX` raises them).
#[test]
fn random_workloads_under_the_hashed_rung_recover_at_every_crash_point() {
    random_workloads(Tracking::Hashed, env_count("SNAPHEAP_CRASH_POINTS_MATRIX", 300));
}

#[test]
fn random_workloads_under_the_all_dirty_rung_recover_at_every_crash_point() {
    random_workloads(Tracking::AllDirty, env_count("SNAPHEAP_CRASH_POINTS_MATRIX", 150));
}

fn random_workloads(tracking: Tracking, target: u64) {
    sim_workload::use_tracking(tracking);
    let first_seed = env_count("SNAPHEAP_CRASH_SEED", 1);
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut seed = first_seed;
    while tally.points < target {
        let before = tally.points;
        random_workload(seed, 40, 30, 10, None, &mut tally);
        seed += 1;
        if tally.points / 10_000 != before / 10_000 {
            println!(
                "  ... {} crash points, {} failures, {:.0} s",
                tally.points,
                tally.failures.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    report(
        &format!(
            "random workloads, {} rung (seeds {first_seed}..{seed})",
            tracking.name()
        ),
        &tally,
        started,
    );
    assert_no_failures(&tally);
}

#[test]
fn every_sequence_of_up_to_three_operations_recovers_at_every_sync_point() {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut seqs: Vec<Vec<Op>> = vec![vec![]];
    for len in 1..=3 {
        let mut next = Vec::new();
        for s in seqs.iter().filter(|s| s.len() == len - 1) {
            for op in ALL_OPS {
                let mut t = s.clone();
                t.push(op);
                next.push(t);
            }
        }
        seqs.extend(next);
    }
    assert_eq!(seqs.len(), 1 + 6 + 36 + 216);
    for (n, seq) in seqs.iter().enumerate() {
        let mut run = Run::create(n as u64 + 1, None);
        // A committed starting state, so that writes and frees have blocks to work on.
        for op in [Op::Alloc, Op::Alloc, Op::Alloc, Op::Commit] {
            run.step(op).unwrap();
        }
        // Heap creation and the setup are crashed everywhere once (the empty sequence);
        // the others only from where the sequence starts.
        let from = if seq.is_empty() { 0 } else { run.disk.trace_len() };
        // Each sync point in one crash mode (picked at random), all modes with
        // SNAPHEAP_SEQ_ALL_MODES=1.
        let all_modes = seq.is_empty() || env_count("SNAPHEAP_SEQ_ALL_MODES", 0) != 0;
        for &op in seq {
            run.step(op)
                .unwrap_or_else(|e| panic!("{seq:?}: {op:?} failed without faults: {e}"));
        }
        let (trace, model) = run.finish();
        let mut rng = Rng::new(n as u64 + 7);
        let before = tally.failures.len();
        let plan = Plan {
            from,
            all_modes,
            ..Plan::default()
        };
        crash_everywhere(&trace, &model, plan, &mut rng, &mut tally);
        for f in &mut tally.failures[before..] {
            *f = format!("{seq:?}: {f}");
        }
    }
    report("sequences of up to 3 operations", &tally, started);
    assert_no_failures(&tally);
}

/// The harness is not blind: with the journal sync skipped, acknowledged commits are lost at
/// some crash point and the oracle reports it.
/// The same with `OpenOptions::remap_clean_pages(true)`: the live heap returns clean pages to
/// mirrors of the simulated snapshot files (`SimVfs::mirror_mapped_files`), which see every
/// later write to those files, and every crash point still recovers a committed state.
/// `SNAPHEAP_CRASH_POINTS_REMAP` sets the minimum number of crash points (default 2000).
#[test]
fn random_workloads_with_remapping_recover_a_committed_state_at_every_crash_point() {
    let target = env_count("SNAPHEAP_CRASH_POINTS_REMAP", 2000);
    let started = Instant::now();
    let mut tally = Tally::default();
    let (mut seed, mut remapped, mut runs_that_remapped) = (1, 0, 0);
    while tally.points < target {
        // 120 operations: long enough that remapping steps also run at commits after automatic
        // snapshots, with pages captured since the fork (the planted bug below needs them).
        let r = random_workload_on(Run::create_remapping(seed, None), seed, 120, 30, 10, None, &mut tally);
        remapped += r;
        runs_that_remapped += u64::from(r > 0);
        seed += 1;
    }
    report(
        &format!("random workloads with remapping (seeds 1..{seed}, {runs_that_remapped} remapped, {remapped} pages)"),
        &tally,
        started,
    );
    assert!(
        runs_that_remapped > 0,
        "no workload remapped a page: the test covers nothing"
    );
    assert_no_failures(&tally);
}

/// The remapping harness is not blind: remapping pages written since the snapshot reverts
/// them, and either the live run (its clean reopens check the state; reverted block lengths
/// make it panic) or some crash point's recovery sees a state that was never committed.
#[test]
fn planted_bug_remapping_written_pages_is_detected() {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut live = Vec::new();
    for seed in 1..=8 {
        let bug = Some(PlantedBug::RemapWrittenPages);
        let mut t = Tally::default();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            random_workload_on(Run::create_remapping(seed, bug), seed, 120, 0, 0, bug, &mut t)
        }));
        if let Err(p) = res {
            // The live run itself read reverted memory (a clean reopen found another state,
            // or a block shorter than the model says).
            live.push(p.downcast_ref::<String>().cloned().unwrap_or_else(|| "panic".into()));
        }
        tally.points += t.points;
        tally.failures.extend(t.failures);
        if !tally.failures.is_empty() || !live.is_empty() {
            break;
        }
    }
    report("planted bug: written pages remapped", &tally, started);
    println!("  live runs that failed: {}", live.len());
    for l in live.iter().take(3) {
        println!("  {l}");
    }
    assert!(
        !tally.failures.is_empty() || !live.is_empty(),
        "the harness missed pages reverted by remapping: {tally:?}"
    );
}

#[test]
fn planted_bug_skipped_journal_sync_is_detected() {
    let started = Instant::now();
    let mut tally = Tally::default();
    for seed in 1..=3 {
        random_workload(seed, 25, 0, 0, Some(PlantedBug::SkipJournalSync), &mut tally);
    }
    report("planted bug: journal sync skipped", &tally, started);
    assert!(
        tally.failures.iter().any(|f| f.contains("recovered version")),
        "the harness missed lost acknowledged commits: {tally:?}"
    );
}

/// The harness is not blind: with the snapshot header made durable before the pages, some
/// crash point recovers a snapshot whose pages are missing, and the oracle reports it.
#[test]
fn planted_bug_snapshot_header_before_pages_is_detected() {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut run = Run::create(99, Some(PlantedBug::SnapshotHeaderFirst));
    for op in [
        Op::Alloc,
        Op::Alloc,
        Op::Commit,
        Op::Snapshot,
        Op::Write,
        Op::Alloc,
        Op::Snapshot,
    ] {
        run.step(op).unwrap();
    }
    let (trace, model) = run.finish();
    let mut rng = Rng::new(5);
    let plan = Plan {
        all_modes: true,
        bug: Some(PlantedBug::SnapshotHeaderFirst),
        ..Plan::default()
    };
    crash_everywhere(&trace, &model, plan, &mut rng, &mut tally);
    report("planted bug: snapshot header before pages", &tally, started);
    assert!(
        !tally.failures.is_empty(),
        "the harness missed a snapshot published before its pages: {tally:?}"
    );
}

/// The harness is not blind to a delta applied to the wrong base: with recovery applying each
/// `DELTA` entry to a zeroed page, the post-image check reports `Corrupt`, and the oracle
/// counts every such recovery as a failure.
#[test]
fn planted_bug_delta_applied_to_a_wrong_base_is_detected() {
    let started = Instant::now();
    let mut tally = Tally::default();
    for seed in 1..=3 {
        // The workload runs correctly (its own reopens replay correctly); only the recoveries
        // of the crashed disks run with the bug.
        let mut run = Run::create(seed, None);
        for _ in 0..30 {
            let op = Op::random(&mut run.rng);
            run.step(op).unwrap();
        }
        let (trace, model) = run.finish();
        let plan = Plan {
            all_modes: true,
            bug: Some(PlantedBug::DeltaReplayZeroBase),
            ..Plan::default()
        };
        crash_everywhere(&trace, &model, plan, &mut Rng::new(seed), &mut tally);
    }
    report("planted bug: delta applied to a wrong base", &tally, started);
    assert!(
        tally.failures.iter().any(|f| f.contains("checksum")),
        "the harness missed deltas applied to the wrong base: {:?}",
        &tally.failures[..tally.failures.len().min(5)]
    );
}
