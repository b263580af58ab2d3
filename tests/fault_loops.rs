//! Fault loops: for each operation (heap creation, commit, snapshot, close, recovery) and each
//! kind of fault (a write or a sync failing with EIO or ENOSPC, once or forever), fail the
//! k-th such I/O of the operation for k = 1, 2, ... until the operation completes without
//! reaching the fault. After every failure the heap must refuse further commits (poisoned),
//! except for the documented case of a failed snapshot *writer*, which leaves the journal
//! intact and the heap usable; and a power loss followed by a fault-free reopen must recover a
//! committed version no older than the last acknowledged one (the oracle of
//! `sim_workload/mod.rs`), in each crash mode.

mod common;
mod sim_workload;

use sim_workload::{check_recovery, check_state, Model, Op, Run, Tally};
use snapheap::io::{CrashMode, Fault, FaultOn, SimVfs};
use snapheap::Error;
use std::time::Instant;

const MODES: [CrashMode; 3] = [CrashMode::DropUnsynced, CrashMode::KeepUnsynced, CrashMode::Torn(7)];

fn counter(disk: &SimVfs, on: FaultOn) -> u64 {
    match on {
        FaultOn::Write => disk.writes(),
        FaultOn::Sync => disk.syncs(),
    }
}

fn arm(disk: &SimVfs, on: FaultOn, k: u64, forever: bool) -> u64 {
    let nth = counter(disk, on) + k;
    disk.inject(Fault {
        on,
        nth,
        errno: if k % 2 == 1 { libc::EIO } else { libc::ENOSPC },
        forever,
    });
    nth
}

/// Crashes `disk` in every mode and checks each recovery against `model`.
fn recover_everywhere(disk: &SimVfs, model: &Model, what: &str, tally: &mut Tally) {
    for mode in MODES {
        tally.points += 1;
        if let Err(e) = check_recovery(&disk.crash(mode), model, usize::MAX, None) {
            tally.failures.push(format!("{what}, then crash ({mode:?}): {e}"));
        }
    }
}

/// A committed heap with uncommitted changes, ready for the operation under test.
fn setup(seed: u64) -> Run {
    let mut run = Run::create(seed, None);
    for op in [Op::Alloc, Op::Alloc, Op::Commit, Op::Alloc, Op::Write, Op::Free] {
        run.step(op).unwrap();
    }
    run
}

/// Runs the loop for one operation on a live heap. `act` runs the operation; `usable_after`
/// says whether an error of the operation may leave the heap unpoisoned (snapshot writers).
fn loop_live(name: &str, act: fn(&mut Run) -> snapheap::Result<()>, tally: &mut Tally) -> u64 {
    let mut cases = 0;
    for on in [FaultOn::Write, FaultOn::Sync] {
        for forever in [false, true] {
            for k in 1u64.. {
                assert!(k < 1000, "{name}: the operation never completes");
                let mut run = setup(k);
                let nth = arm(&run.disk, on, k, forever);
                let r = act(&mut run);
                let fired = counter(&run.disk, on) >= nth;
                cases += 1;
                let what = format!("{name}: {on:?} fault #{k} (forever: {forever}) -> {r:?}");
                if let (Err(e), Some(_)) = (&r, &run.heap) {
                    // The heap must be poisoned, unless only the snapshot writer failed.
                    let after = run.step(Op::Alloc).and_then(|_| run.step(Op::Commit));
                    let writer_only = matches!(e, Error::Io { op, .. } if op.contains("snapshot writer"));
                    match after {
                        Err(Error::Poisoned { .. }) | Err(Error::Io { .. }) => {}
                        Ok(()) if writer_only && !forever => {}
                        other => tally.failures.push(format!("{what}: a later commit gave {other:?}")),
                    }
                }
                if r.is_ok() && fired && run.heap.is_some() {
                    // The fault was absorbed (e.g. an automatic snapshot failed, or a best-effort
                    // directory sync): later commits must still be durable when acknowledged.
                    let after = run.step(Op::Alloc).and_then(|_| run.step(Op::Commit));
                    if !forever && after.is_err() {
                        tally
                            .failures
                            .push(format!("{what}: the next commit failed: {after:?}"));
                    }
                }
                run.heap = None;
                run.disk.clear_faults();
                recover_everywhere(&run.disk, &run.model, &what, tally);
                if r.is_ok() && !fired {
                    println!("{name}: {on:?} faults (forever: {forever}): completes at k = {k}");
                    break;
                }
            }
        }
    }
    cases
}

fn report(name: &str, cases: u64, tally: &Tally, started: Instant) {
    println!(
        "{name}: {cases} fault cases, {} recoveries checked, {} failures, {:.1} s",
        tally.points,
        tally.failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        tally.failures.is_empty(),
        "{:#?}",
        &tally.failures[..tally.failures.len().min(20)]
    );
}

#[test]
fn commit_failing_at_every_io_poisons_and_recovers_the_last_durable_state() {
    let (t, mut tally) = (Instant::now(), Tally::default());
    let cases = loop_live("commit", |r| r.step(Op::Commit), &mut tally);
    report("commit", cases, &tally, t);
}

#[test]
fn snapshot_failing_at_every_io_poisons_or_keeps_the_journal_and_recovers() {
    let (t, mut tally) = (Instant::now(), Tally::default());
    let cases = loop_live("snapshot", |r| r.step(Op::Snapshot), &mut tally);
    report("snapshot", cases, &tally, t);
}

#[test]
fn close_failing_at_every_io_recovers_the_last_durable_state() {
    let (t, mut tally) = (Instant::now(), Tally::default());
    let cases = loop_live(
        "close",
        |r| {
            r.step(Op::Commit)?;
            r.step(Op::Alloc)?;
            // A clean close commits (a version of its own) and snapshots.
            let v = r.model.committed.len();
            r.heap().write().version = v as u64;
            r.model.starts.push(r.disk.trace_len());
            r.model.committed.push(r.model.working.clone());
            r.model.acks.push(None);
            r.heap.take().unwrap().close()?;
            r.model.acks[v] = Some(r.disk.trace_len());
            Ok(())
        },
        &mut tally,
    );
    report("close", cases, &tally, t);
}

#[test]
fn heap_creation_failing_at_every_io_leaves_a_creatable_heap() {
    let (t, mut tally) = (Instant::now(), Tally::default());
    let mut model = Model::default();
    model.committed.push(Vec::new());
    model.starts.push(0);
    model.acks.push(None);
    let mut cases = 0;
    for on in [FaultOn::Write, FaultOn::Sync] {
        for forever in [false, true] {
            for k in 1u64.. {
                assert!(k < 1000);
                let disk = SimVfs::new();
                let nth = arm(&disk, on, k, forever);
                let r = sim_workload::open_sim(&disk, None);
                let fired = counter(&disk, on) >= nth;
                cases += 1;
                let ok = r.is_ok();
                let what = format!("create: {on:?} fault #{k} (forever: {forever}) -> ok: {ok}");
                drop(r);
                recover_everywhere(&disk, &model, &what, &mut tally);
                if ok && !fired {
                    println!("create: {on:?} faults (forever: {forever}): completes at k = {k}");
                    break;
                }
            }
        }
    }
    report("create", cases, &tally, t);
}

#[test]
fn recovery_failing_at_every_io_can_be_retried_after_another_crash() {
    let (t, mut tally) = (Instant::now(), Tally::default());
    let mut run = setup(3);
    for op in [Op::Commit, Op::Alloc, Op::Commit, Op::Write] {
        run.step(op).unwrap();
    }
    let (trace, model) = run.finish();
    let mut replay = trace.replay();
    replay.advance_to(trace.ops.len());
    let (lo, hi) = model.allowed(trace.ops.len());
    let mut cases = 0;
    for base_mode in [CrashMode::KeepUnsynced, CrashMode::Torn(11)] {
        let crashed = replay.crash(base_mode);
        for on in [FaultOn::Write, FaultOn::Sync] {
            for forever in [false, true] {
                for k in 1u64.. {
                    assert!(k < 1000);
                    let disk = crashed.crash(CrashMode::KeepUnsynced);
                    let nth = arm(&disk, on, k, forever);
                    let r = sim_workload::open_sim(&disk, None);
                    let fired = counter(&disk, on) >= nth;
                    cases += 1;
                    let ok = r.is_ok();
                    let what = format!("recovery of {base_mode:?}: {on:?} fault #{k} (forever: {forever}) -> ok: {ok}");
                    if let Ok(h) = &r {
                        if let Err(e) = check_state(h, &model, lo, hi) {
                            tally.failures.push(format!("{what}: {e}"));
                        }
                    }
                    drop(r);
                    recover_everywhere(&disk, &model, &what, &mut tally);
                    if ok && !fired {
                        println!("recovery: {on:?} faults (forever: {forever}): completes at k = {k}");
                        break;
                    }
                }
            }
        }
    }
    report("recovery", cases, &tally, t);
}
