//! `snapheap`: inspect, check, list the journal of and compact a snapheap heap directory
//! offline, without knowing its root type. See the README's "Tools" section.
//!
//! Exit codes: 0 success (for `check`: healthy), 1 `check` found problems, 2 the command could
//! not run (locked, unreadable, not a heap directory, bad arguments).

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use snapheap::inspect::{
    self, CheckReport, GroupInfo, HeapInfo, Inspector, Problem, RootIdentity, RunKind, SnapshotState,
};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "snapheap",
    version,
    about = "Inspect, check and compact snapheap heap directories offline"
)]
struct Cli {
    /// Print one JSON document on stdout instead of text (no progress bar).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Format, identity, root type, snapshot files, journals and disk use. Writes nothing.
    Info {
        /// The heap directory.
        dir: PathBuf,
    },
    /// Verify every checksum, the journal chain, replay into a private image and check the
    /// allocator. Writes nothing. Exit 0 healthy, 1 problems found, 2 could not run.
    Check {
        /// The heap directory.
        dir: PathBuf,
    },
    /// One line per commit group of the journal chain: seq, offset, bytes, pages. Writes nothing.
    Journal {
        /// The heap directory.
        dir: PathBuf,
        /// Only groups with this commit sequence number or later.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Also list each group's page runs.
        #[arg(long)]
        pages: bool,
    },
    /// Replay the journals into a new snapshot (the normal crash-safe protocol) and remove the
    /// journals it covers. Refuses a heap that is open elsewhere.
    Compact {
        /// The heap directory.
        dir: PathBuf,
    },
}

/// Exit code: the command could not run.
const CANNOT_RUN: u8 = 2;

fn main() -> ExitCode {
    // Rust starts programs with SIGPIPE ignored, so writing to a closed pipe (`snapheap info
    // DIR | head`) makes `println!` panic. Like other command-line tools, end quietly instead:
    // restore the default action, which terminates the process.
    // SAFETY: runs first in main, before any thread exists; `signal` with SIG_DFL has no other
    // precondition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let show_progress = !cli.json && std::io::stdout().is_terminal();
    let code = match &cli.cmd {
        Cmd::Info { dir } => run(dir, cli.json, |d| info(d, cli.json)),
        Cmd::Check { dir } => check(dir, cli.json, show_progress),
        Cmd::Journal { dir, from, pages } => run(dir, cli.json, |d| journal(d, *from, *pages, cli.json)),
        Cmd::Compact { dir } => run(dir, cli.json, |d| compact(d, cli.json, show_progress)),
    };
    ExitCode::from(code)
}

/// Runs a command that either succeeds (0) or could not run (2, the error printed).
fn run(dir: &Path, json: bool, f: impl FnOnce(&Path) -> snapheap::Result<()>) -> u8 {
    match f(dir) {
        Ok(()) => 0,
        Err(e) => cannot_run(dir, json, &e),
    }
}

fn cannot_run(dir: &Path, json: bool, e: &snapheap::Error) -> u8 {
    if json {
        println!(
            "{}",
            json!({ "dir": dir, "error": e.to_string(), "exit_code": CANNOT_RUN })
        );
    } else {
        eprintln!("snapheap: {}: {e}", dir.display());
    }
    CANNOT_RUN
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn problem_json(p: &Problem) -> Value {
    json!({ "file": p.file, "offset": p.offset, "what": p.what })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// `1.5 MiB`-style sizes for the text output.
fn size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn info(dir: &Path, json: bool) -> snapheap::Result<()> {
    let i = Inspector::open(dir)?.info()?;
    if json {
        println!("{}", info_json(&i));
        return Ok(());
    }
    println!("heap            {}", i.dir.display());
    println!("format          version {}", i.format_version);
    println!("heap id         {:016x}", i.heap_id);
    println!(
        "region          base {:#x}, max size {} ({})",
        i.base,
        hex(i.max_size),
        size(i.max_size)
    );
    let schema = |s: &str| {
        if s.is_empty() {
            "(none)".to_string()
        } else {
            format!("{s:?}")
        }
    };
    let mr = &i.meta_root;
    match &i.root {
        RootIdentity::Record {
            type_name,
            size,
            align,
            schema: sc,
            migrations,
            address,
            record_address,
        } => {
            field("root type", type_name);
            println!("                size {size}, align {align}, from the committed root record");
            println!("schema          {}, {migrations} migration(s)", schema(sc));
            println!("root            at {address:#x}, root record at {record_address:#x}");
        }
        RootIdentity::InMeta => {
            field("root type", &mr.type_name);
            println!(
                "                size {}, align {}, from meta (format 1)",
                mr.size, mr.align
            );
            println!("schema          {}", schema(&mr.schema));
        }
        RootIdentity::Global(roots) => {
            println!("root type       GlobalHeap: {} root(s) in its registry", roots.len());
            for r in roots {
                println!(
                    "  root          type hash {:016x}, size {}, align {}, at {:#x}",
                    r.type_hash, r.size, r.align, r.address
                );
            }
        }
        RootIdentity::NoRoot => println!("root type       none committed yet"),
        RootIdentity::Unreadable(why) => field("root type", &format!("unreadable: {why}")),
    }
    if !matches!(i.root, RootIdentity::InMeta) {
        field(
            "meta records",
            &format!("{} (size {}, align {})", mr.type_name, mr.size, mr.align),
        );
    }
    println!("created         {} (unix seconds)", i.created_unix);
    for s in &i.snapshots {
        let state = match &s.state {
            SnapshotState::Empty => "empty".to_string(),
            SnapshotState::Incomplete { generation } => format!("incomplete (generation {generation}, not used)"),
            SnapshotState::Damaged(p) => format!("DAMAGED at byte {}:", p.offset),
            SnapshotState::Valid {
                generation,
                seq,
                journal_id,
                extent,
            } => format!(
                "generation {generation}, commit {seq}, extent {}, journals from {journal_id}{}",
                size(*extent),
                if s.newest { " (newest)" } else { "" }
            ),
        };
        println!("{:<15} {:>10}  {state}", file_name(&s.path), size(s.len));
        if let SnapshotState::Damaged(p) = &s.state {
            print_detail(&p.what);
        }
    }
    if i.journals.is_empty() {
        println!("journals        none");
    }
    for j in &i.journals {
        let what = if j.stale {
            "stale (covered by the newest snapshot)".to_string()
        } else if let Some(p) = &j.error {
            format!("ERROR at byte {}:", p.offset)
        } else {
            match j.seqs {
                Some((a, b)) => format!("commits {a}..={b} ({} groups)", j.groups),
                None => format!("no commits (starts after {})", j.start_seq.unwrap_or(0)),
            }
        };
        println!("{:<24} {:>10}  {what}", file_name(&j.path), size(j.len));
        if let (false, Some(p)) = (j.stale, &j.error) {
            print_detail(&p.what);
        }
    }
    match i.last_durable_seq {
        Some(s) => println!("last durable    commit {s}"),
        None => field(
            "last durable",
            "unknown (the journal chain is broken; run `snapheap check`)",
        ),
    }
    println!("disk use        {} ({} bytes)", size(i.disk_bytes), i.disk_bytes);
    Ok(())
}

/// `label` in a 16-column field, then `text` wrapped to 84 columns (a type name may be 256
/// bytes long), so the output fits 100 columns.
fn field(label: &str, text: &str) {
    for (k, line) in wrap(text, 84).iter().enumerate() {
        println!("{:<16}{line}", if k == 0 { label } else { "" });
    }
}

/// `text` in lines of at most `width` bytes: broken at spaces, and inside a word (at a
/// character boundary) only when the word alone is longer than a line.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let mut rest = word;
        while !rest.is_empty() {
            let line = lines.last_mut().expect("one line");
            let room = if line.is_empty() {
                width
            } else {
                width.saturating_sub(line.len() + 1)
            };
            if rest.len() <= room {
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(rest);
                rest = "";
            } else if line.is_empty() {
                let mut cut = width.min(rest.len());
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.push_str(&rest[..cut]);
                rest = &rest[cut..];
                lines.push(String::new());
            } else {
                lines.push(String::new());
            }
        }
    }
    if lines.len() > 1 && lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// The lines of a problem's description under a file's line, indented by 4.
fn print_detail(what: &str) {
    for line in wrap(what, 96) {
        println!("    {line}");
    }
}

fn info_json(i: &HeapInfo) -> Value {
    let snaps: Vec<Value> = i
        .snapshots
        .iter()
        .map(|s| {
            let mut v = json!({ "file": s.path, "len": s.len, "newest": s.newest });
            let m = v.as_object_mut().expect("object");
            match &s.state {
                SnapshotState::Empty => {
                    m.insert("state".into(), "empty".into());
                }
                SnapshotState::Incomplete { generation } => {
                    m.insert("state".into(), "incomplete".into());
                    m.insert("generation".into(), (*generation).into());
                }
                SnapshotState::Damaged(p) => {
                    m.insert("state".into(), "damaged".into());
                    m.insert("problem".into(), problem_json(p));
                }
                SnapshotState::Valid {
                    generation,
                    seq,
                    journal_id,
                    extent,
                } => {
                    m.insert("state".into(), "valid".into());
                    m.insert("generation".into(), (*generation).into());
                    m.insert("seq".into(), (*seq).into());
                    m.insert("journal_id".into(), (*journal_id).into());
                    m.insert("extent".into(), (*extent).into());
                }
            }
            v
        })
        .collect();
    let journals: Vec<Value> = i
        .journals
        .iter()
        .map(|j| {
            json!({
                "file": j.path, "id": j.id, "len": j.len, "stale": j.stale, "start_seq": j.start_seq,
                "first_seq": j.seqs.map(|s| s.0), "last_seq": j.seqs.map(|s| s.1), "groups": j.groups,
                "valid_end": j.valid_end, "error": j.error.as_ref().map(problem_json),
            })
        })
        .collect();
    json!({
        "dir": i.dir, "format_version": i.format_version, "heap_id": format!("{:016x}", i.heap_id),
        "base": hex(i.base), "max_size": i.max_size,
        "root_type": root_type_json(i), "root": root_json(i),
        "meta_root": { "name": i.meta_root.type_name, "size": i.meta_root.size, "align": i.meta_root.align,
                       "schema": i.meta_root.schema },
        "created_unix": i.created_unix, "snapshots": snaps, "journals": journals,
        "last_durable_seq": i.last_durable_seq, "disk_bytes": i.disk_bytes,
    })
}

/// The user's root type (`name`, `size`, `align`, `schema`), or null when it is not known
/// (a `GlobalHeap` heap, no root yet, unreadable).
fn root_type_json(i: &HeapInfo) -> Value {
    match &i.root {
        RootIdentity::Record {
            type_name,
            size,
            align,
            schema,
            ..
        } => json!({ "name": type_name, "size": size, "align": align, "schema": schema }),
        RootIdentity::InMeta => json!({
            "name": i.meta_root.type_name, "size": i.meta_root.size, "align": i.meta_root.align,
            "schema": i.meta_root.schema,
        }),
        _ => Value::Null,
    }
}

/// Where the root identity came from and what it says.
fn root_json(i: &HeapInfo) -> Value {
    match &i.root {
        RootIdentity::Record {
            migrations,
            address,
            record_address,
            ..
        } => json!({
            "source": "root_record", "migrations": migrations, "address": hex(*address),
            "record_address": hex(*record_address),
        }),
        RootIdentity::InMeta => json!({ "source": "meta" }),
        RootIdentity::Global(roots) => json!({
            "source": "global_registry",
            "roots": roots.iter().map(|r| json!({
                "type_hash": format!("{:016x}", r.type_hash), "size": r.size, "align": r.align,
                "address": hex(r.address),
            })).collect::<Vec<_>>(),
        }),
        RootIdentity::NoRoot => json!({ "source": "none" }),
        RootIdentity::Unreadable(why) => json!({ "source": "unreadable", "error": why }),
    }
}

fn bar(show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

fn check(dir: &Path, json: bool, show_progress: bool) -> u8 {
    let ins = match Inspector::open(dir) {
        Ok(i) => i,
        // Damaged `meta`: a problem found, not a failure to run.
        Err(snapheap::Error::Corrupt { file, offset, what }) => {
            let r = CheckReport {
                problems: vec![Problem { file, offset, what }],
                ..CheckReport::default()
            };
            return print_check(dir, &r, json);
        }
        Err(e) => return cannot_run(dir, json, &e),
    };
    let pb = bar(show_progress);
    pb.set_message("checking");
    let res = ins.check(&mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    });
    pb.finish_and_clear();
    match res {
        Ok(r) => print_check(dir, &r, json),
        Err(e) => cannot_run(dir, json, &e),
    }
}

fn print_check(dir: &Path, r: &CheckReport, json: bool) -> u8 {
    let code = if r.healthy() { 0 } else { 1 };
    if json {
        let alloc = r.allocator.map(|a| {
            json!({
                "segments": a.segments, "slabs": a.slabs, "spans": a.spans, "huge": a.huge,
                "used_bytes": a.used_bytes, "free_bytes": a.free_bytes, "extent": a.extent,
            })
        });
        println!(
            "{}",
            json!({
                "dir": dir, "healthy": r.healthy(), "exit_code": code,
                "checked": {
                    "checksums": r.checksums, "snapshot_headers": r.snapshot_headers,
                    "snapshot_bytes_read": r.snapshot_bytes_read, "journals": r.journals,
                    "journal_bytes": r.journal_bytes, "groups": r.groups, "pages_replayed": r.pages_replayed,
                },
                "last_seq": r.last_seq, "allocator": alloc,
                "problems": r.problems.iter().map(problem_json).collect::<Vec<_>>(),
                "notes": r.notes.iter().map(problem_json).collect::<Vec<_>>(),
            })
        );
        return code;
    }
    println!("checked {}:", dir.display());
    println!("  checksums        {} verified", r.checksums);
    println!(
        "  snapshots        {} headers, {} of data read",
        r.snapshot_headers,
        size(r.snapshot_bytes_read)
    );
    println!(
        "  journals         {} in the chain, {}, {} commit groups",
        r.journals,
        size(r.journal_bytes),
        r.groups
    );
    if r.replayed {
        println!(
            "  replay           {} pages into a private image, up to commit {}",
            r.pages_replayed, r.last_seq
        );
    } else {
        println!("  replay           not run (the journal chain is broken)");
    }
    match r.allocator {
        Some(a) => println!(
            "  allocator        ok: {} segments, {} slabs, {} spans, {} huge; {} used, {} free in slabs",
            a.segments,
            a.slabs,
            a.spans,
            a.huge,
            size(a.used_bytes),
            size(a.free_bytes)
        ),
        None => println!("  allocator        not checked"),
    }
    for n in &r.notes {
        print_entry("note", n);
    }
    for p in &r.problems {
        print_entry("PROBLEM", p);
    }
    if r.healthy() {
        println!("healthy");
    } else {
        println!("{} problem(s) found", r.problems.len());
    }
    code
}

/// `LABEL: file at byte offset N:` and the description wrapped to 100 columns.
fn print_entry(label: &str, p: &Problem) {
    println!("{label}: {} at byte offset {}:", p.file.display(), p.offset);
    print_detail(&p.what);
}

fn kind_name(k: RunKind) -> &'static str {
    match k {
        RunKind::Full => "full",
        RunKind::Delta => "delta",
    }
}

fn journal(dir: &Path, from: u64, pages: bool, json: bool) -> snapheap::Result<()> {
    let groups = Inspector::open(dir)?.journal(from)?;
    if json {
        let gs: Vec<Value> = groups.iter().map(|g| group_json(g, pages)).collect();
        println!("{}", json!({ "dir": dir, "groups": gs }));
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:>12} {:>10} {:>8} {:>8}",
        "journal", "seq", "offset", "bytes", "full", "delta"
    );
    for g in &groups {
        let delta: u64 = g.runs.iter().map(|r| r.pages).sum::<u64>() - g.full_pages();
        println!(
            "{:<24} {:>8} {:>12} {:>10} {:>8} {:>8}",
            file_name(&g.journal),
            g.seq,
            g.offset,
            g.bytes,
            g.full_pages(),
            delta
        );
        if pages {
            for r in &g.runs {
                println!(
                    "    {:<5} region {:#014x} +{:<5} pages  record at {}",
                    kind_name(r.kind),
                    r.region_offset,
                    r.pages,
                    r.file_offset
                );
            }
        }
    }
    println!("{} commit group(s)", groups.len());
    Ok(())
}

fn group_json(g: &GroupInfo, pages: bool) -> Value {
    let total: u64 = g.runs.iter().map(|r| r.pages).sum();
    let mut v = json!({
        "journal": g.journal, "seq": g.seq, "offset": g.offset, "bytes": g.bytes, "extent": g.extent,
        "full_pages": g.full_pages(), "delta_pages": total - g.full_pages(),
    });
    if pages {
        let runs: Vec<Value> = g
            .runs
            .iter()
            .map(|r| {
                json!({
                    "kind": kind_name(r.kind), "region_offset": r.region_offset, "pages": r.pages,
                    "file_offset": r.file_offset, "payload_bytes": r.payload_bytes,
                })
            })
            .collect();
        v.as_object_mut().expect("object").insert("runs".into(), runs.into());
    }
    v
}

fn compact(dir: &Path, json: bool, show_progress: bool) -> snapheap::Result<()> {
    let pb = if show_progress {
        let pb = ProgressBar::new_spinner();
        pb.set_message("replaying the journals into a new snapshot");
        pb.enable_steady_tick(std::time::Duration::from_millis(100));
        pb
    } else {
        ProgressBar::hidden()
    };
    let res = inspect::compact(dir);
    pb.finish_and_clear();
    let r = res?;
    if json {
        println!(
            "{}",
            json!({
                "dir": dir, "bytes_before": r.bytes_before, "bytes_after": r.bytes_after,
                "journals_before": r.journals_before, "journals_after": r.journals_after,
                "seq": r.seq, "generation": r.generation,
            })
        );
    } else {
        println!(
            "compacted {}: snapshot generation {} holds commit {}",
            dir.display(),
            r.generation,
            r.seq
        );
        println!(
            "  before  {} ({} bytes), {} journal file(s)",
            size(r.bytes_before),
            r.bytes_before,
            r.journals_before
        );
        println!(
            "  after   {} ({} bytes), {} journal file(s)",
            size(r.bytes_after),
            r.bytes_after,
            r.journals_after
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_breaks_at_spaces_and_inside_only_overlong_words() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("abcdefgh ij", 3), ["abc", "def", "gh", "ij"]);
        assert_eq!(wrap("", 10), [""]);
        let long = "x".repeat(200);
        assert!(wrap(&format!("type {long} end"), 84).iter().all(|l| l.len() <= 84));
        assert_eq!(
            wrap(&format!("type {long} end"), 84).concat().replace(' ', "").len(),
            200 + 7
        );
        // Multi-byte characters are never split.
        assert_eq!(wrap("ééé", 3), ["é", "é", "é"]);
    }
}
