//! The peers of the YCSB benchmark behind one trait, each at its strongest durable setting:
//! a batch of operations runs in one transaction, and a batch that writes commits durably
//! before [`Store::run`] returns.
//!
//! - snapheap: `Heap<HashMap<u64, [u8; 100]>>`, `Durability::Immediate`;
//! - redb 4: one table `u64 -> [u8; 100]`, `Durability::Immediate` (its default);
//! - SQLite (rusqlite, bundled): WAL, `synchronous=FULL`, one table
//!   `(k INTEGER PRIMARY KEY, v BLOB)`, cached prepared statements;
//! - LMDB (heed): default flags (every commit synced), one database `u64 (big-endian) -> bytes`;
//! - the no-store baseline: a `std::collections::HashMap` encoded whole with bincode at every
//!   commit, written to a temporary file, `fdatasync`ed, renamed over the data file, and the
//!   directory `fsync`ed; opening reads and decodes the file.

use super::workload::{check_value, value, version_of, Op, Val, VALUE_LEN};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Reads and writes seen by a run, to check that nothing went missing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Reads that found their key.
    pub found: u64,
    /// Reads that did not (must stay zero: every requested key was loaded).
    pub missing: u64,
    /// A checksum over the versions read, so reads cannot be optimised away.
    pub sum: u64,
    /// Whether to check every value read against [`check_value`] (costs about as much as a
    /// fast read, so the throughput rows leave it off).
    pub check: bool,
    /// Reads whose value failed the check.
    pub bad: u64,
    /// The last value read.
    pub last: Option<Val>,
}

impl Tally {
    /// A tally that checks every value read.
    pub fn checking() -> Tally {
        Tally {
            check: true,
            ..Tally::default()
        }
    }

    fn saw(&mut self, k: u64, v: Option<Val>) {
        match v {
            Some(v) => {
                self.found += 1;
                self.sum = self.sum.wrapping_add(version_of(&v));
                if self.check {
                    if !check_value(k, &v) {
                        self.bad += 1;
                    }
                    self.last = Some(v);
                }
            }
            None => self.missing += 1,
        }
    }
}

/// The value a read-modify-write stores after reading `old` under `key`.
fn rmw_value(key: u64, old: &Val) -> Val {
    value(key, version_of(old) + 1)
}

/// A store under test.
pub trait Store {
    /// Runs `ops` in one transaction (a read-only one if no op writes) and, if any op writes,
    /// commits durably.
    fn run(&mut self, ops: &[Op], t: &mut Tally);
    /// Closes the store cleanly (whatever its clean shutdown does).
    fn close(self: Box<Self>);
    /// snapheap's counters (other peers have none).
    fn snapheap_stats(&self) -> Option<snapheap::Stats> {
        None
    }
}

/// The peers, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// snapheap.
    Snapheap,
    /// redb.
    Redb,
    /// SQLite.
    Sqlite,
    /// LMDB.
    Lmdb,
    /// The no-store baseline.
    Baseline,
}

/// Every peer.
pub const PEERS: [Peer; 5] = [Peer::Snapheap, Peer::Redb, Peer::Sqlite, Peer::Lmdb, Peer::Baseline];

impl Peer {
    /// The short name used in tables, JSON and command lines.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Snapheap => "snapheap",
            Peer::Redb => "redb",
            Peer::Sqlite => "sqlite",
            Peer::Lmdb => "lmdb",
            Peer::Baseline => "baseline",
        }
    }

    /// The peer named `s`.
    pub fn from_name(s: &str) -> Option<Peer> {
        PEERS.iter().copied().find(|p| p.name() == s)
    }

    /// Opens (creating if needed) the peer's store in directory `dir`.
    pub fn open(self, dir: &Path) -> Box<dyn Store> {
        std::fs::create_dir_all(dir).expect("create store dir");
        match self {
            Peer::Snapheap => Box::new(Snap::open(dir)),
            Peer::Redb => Box::new(Redb::open(dir)),
            Peer::Sqlite => Box::new(Sqlite::open(dir)),
            Peer::Lmdb => Box::new(Lmdb::open(dir)),
            Peer::Baseline => Box::new(Baseline::open(dir)),
        }
    }
}

// ---------------------------------------------------------------------------------------------

type SnapRoot = snapheap::collections::HashMap<u64, Val>;

struct Snap {
    heap: snapheap::Heap<SnapRoot>,
}

impl Snap {
    fn open(dir: &Path) -> Snap {
        let mut o = snapheap::OpenOptions::new();
        o.durability(snapheap::Durability::Immediate);
        let heap = o
            .open::<SnapRoot>(dir.join("heap"), snapheap::collections::HashMap::new_in)
            .expect("open snapheap heap");
        Snap { heap }
    }
}

impl Store for Snap {
    fn run(&mut self, ops: &[Op], t: &mut Tally) {
        if !ops.iter().any(Op::writes) {
            let g = self.heap.read();
            for op in ops {
                if let Op::Read(k) = op {
                    t.saw(*k, g.get(k).copied());
                }
            }
            return;
        }
        let mut g = self.heap.write();
        for op in ops {
            match *op {
                Op::Read(k) => {
                    t.saw(k, g.get(&k).copied());
                }
                Op::Insert(k, ver) | Op::Update(k, ver) => {
                    g.insert(k, value(k, ver));
                }
                Op::Rmw(k) => match g.get_mut(&k) {
                    Some(v) => {
                        t.found += 1;
                        *v = rmw_value(k, v);
                    }
                    None => t.missing += 1,
                },
            }
        }
        g.commit().expect("snapheap commit");
    }

    fn close(self: Box<Self>) {
        self.heap.close().expect("snapheap close");
    }

    fn snapheap_stats(&self) -> Option<snapheap::Stats> {
        Some(self.heap.stats())
    }
}

// ---------------------------------------------------------------------------------------------

const REDB_TABLE: redb::TableDefinition<u64, Val> = redb::TableDefinition::new("ycsb");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Redb {
        let db = redb::Database::create(dir.join("db.redb")).expect("open redb");
        let tx = db.begin_write().expect("redb begin_write");
        tx.open_table(REDB_TABLE).expect("redb open_table");
        tx.commit().expect("redb commit");
        Redb { db }
    }
}

impl Store for Redb {
    fn run(&mut self, ops: &[Op], t: &mut Tally) {
        use redb::{ReadableDatabase, ReadableTable};
        if !ops.iter().any(Op::writes) {
            let tx = self.db.begin_read().expect("redb begin_read");
            let table = tx.open_table(REDB_TABLE).expect("redb open_table");
            for op in ops {
                if let Op::Read(k) = op {
                    t.saw(*k, table.get(*k).expect("redb get").map(|g| g.value()));
                }
            }
            return;
        }
        let tx = self.db.begin_write().expect("redb begin_write");
        {
            let mut table = tx.open_table(REDB_TABLE).expect("redb open_table");
            for op in ops {
                match *op {
                    Op::Read(k) => {
                        t.saw(k, table.get(k).expect("redb get").map(|g| g.value()));
                    }
                    Op::Insert(k, ver) | Op::Update(k, ver) => {
                        table.insert(k, value(k, ver)).expect("redb insert");
                    }
                    Op::Rmw(k) => {
                        let old = table.get(k).expect("redb get").map(|g| g.value());
                        match old {
                            Some(old) => {
                                t.found += 1;
                                table.insert(k, rmw_value(k, &old)).expect("redb insert");
                            }
                            None => t.missing += 1,
                        }
                    }
                }
            }
        }
        tx.commit().expect("redb commit");
    }

    fn close(self: Box<Self>) {
        drop(self.db);
    }
}

// ---------------------------------------------------------------------------------------------

struct Sqlite {
    conn: rusqlite::Connection,
}

const SQL_GET: &str = "SELECT v FROM kv WHERE k = ?1";
const SQL_INSERT: &str = "INSERT INTO kv (k, v) VALUES (?1, ?2)";
const SQL_UPDATE: &str = "UPDATE kv SET v = ?2 WHERE k = ?1";

impl Sqlite {
    fn open(dir: &Path) -> Sqlite {
        let conn = rusqlite::Connection::open(dir.join("db.sqlite")).expect("open sqlite");
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .expect("sqlite journal_mode");
        assert_eq!(mode.to_ascii_lowercase(), "wal", "sqlite refused WAL mode");
        conn.pragma_update(None, "synchronous", "FULL")
            .expect("sqlite synchronous");
        conn.execute_batch("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .expect("sqlite create table");
        Sqlite { conn }
    }

    fn get(&self, k: u64) -> Option<Val> {
        use rusqlite::OptionalExtension;
        let mut st = self.conn.prepare_cached(SQL_GET).expect("sqlite prepare");
        st.query_row([k as i64], |r| {
            let b = r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
            let v: Val = b.try_into().map_err(|_| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, "length".into())
            })?;
            Ok(v)
        })
        .optional()
        .expect("sqlite select")
    }

    fn put(&self, sql: &str, k: u64, v: &Val) {
        let mut st = self.conn.prepare_cached(sql).expect("sqlite prepare");
        let n = st.execute(rusqlite::params![k as i64, &v[..]]).expect("sqlite write");
        assert_eq!(n, 1, "sqlite: {sql} changed {n} rows for key {k}");
    }
}

impl Store for Sqlite {
    fn run(&mut self, ops: &[Op], t: &mut Tally) {
        let batch = ops.len() > 1 || ops.iter().any(Op::writes);
        if batch {
            self.conn.execute_batch("BEGIN").expect("sqlite begin");
        }
        for op in ops {
            match *op {
                Op::Read(k) => {
                    t.saw(k, self.get(k));
                }
                Op::Insert(k, ver) => self.put(SQL_INSERT, k, &value(k, ver)),
                Op::Update(k, ver) => self.put(SQL_UPDATE, k, &value(k, ver)),
                Op::Rmw(k) => match self.get(k) {
                    Some(old) => {
                        t.found += 1;
                        self.put(SQL_UPDATE, k, &rmw_value(k, &old));
                    }
                    None => t.missing += 1,
                },
            }
        }
        if batch {
            self.conn.execute_batch("COMMIT").expect("sqlite commit");
        }
    }

    fn close(self: Box<Self>) {
        self.conn.close().map_err(|(_, e)| e).expect("sqlite close");
    }
}

// ---------------------------------------------------------------------------------------------

type LmdbDb = heed::Database<'static, heed::types::U64<heed::byteorder::BE>, heed::types::Bytes>;

struct Lmdb {
    env: heed::Env,
    db: LmdbDb,
}

impl Lmdb {
    fn open(dir: &Path) -> Lmdb {
        // SAFETY: heed's open is unsafe because the memory map must not be modified by another
        // process or handle behind its back; this directory is used by this handle only.
        let env = unsafe { heed::EnvOpenOptions::new().map_size(8 << 30).open(dir) }.expect("open lmdb");
        let w = env.write_txn().expect("lmdb write_txn");
        let db: LmdbDb = env
            .create_databases_and_commit(w, |o, w| {
                o.create_database(w, None).map(heed::CommitOrAbort::<_, ()>::Commit)
            })
            .expect("lmdb create database")
            .unwrap_commit();
        Lmdb { env, db }
    }
}

fn lmdb_val(b: &[u8]) -> Val {
    b.try_into().expect("lmdb value of 100 bytes")
}

impl Store for Lmdb {
    fn run(&mut self, ops: &[Op], t: &mut Tally) {
        if !ops.iter().any(Op::writes) {
            let r = self.env.read_txn().expect("lmdb read_txn");
            for op in ops {
                if let Op::Read(k) = op {
                    t.saw(*k, self.db.get(&r, k).expect("lmdb get").map(lmdb_val));
                }
            }
            return;
        }
        let mut w = self.env.write_txn().expect("lmdb write_txn");
        for op in ops {
            match *op {
                Op::Read(k) => {
                    t.saw(k, self.db.get(&w, &k).expect("lmdb get").map(lmdb_val));
                }
                Op::Insert(k, ver) | Op::Update(k, ver) => {
                    self.db.put(&mut w, &k, &value(k, ver)).expect("lmdb put");
                }
                Op::Rmw(k) => {
                    let old = self.db.get(&w, &k).expect("lmdb get").map(lmdb_val);
                    match old {
                        Some(old) => {
                            t.found += 1;
                            self.db.put(&mut w, &k, &rmw_value(k, &old)).expect("lmdb put");
                        }
                        None => t.missing += 1,
                    }
                }
            }
        }
        w.commit().expect("lmdb commit");
    }

    fn close(self: Box<Self>) {
        let Lmdb { env, db: _ } = *self;
        let closed = env.prepare_for_closing();
        closed.wait();
    }
}

// ---------------------------------------------------------------------------------------------

struct Baseline {
    dir: PathBuf,
    map: std::collections::HashMap<u64, Val>,
}

const BASELINE_FILE: &str = "map.bincode";
const BASELINE_TMP: &str = "map.bincode.tmp";

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding()
}

impl Baseline {
    fn open(dir: &Path) -> Baseline {
        let path = dir.join(BASELINE_FILE);
        let map = match std::fs::read(&path) {
            Ok(bytes) => {
                let (map, used): (std::collections::HashMap<u64, Val>, usize) =
                    bincode::decode_from_slice(&bytes, bincode_config()).expect("baseline decode");
                assert_eq!(used, bytes.len(), "baseline: trailing bytes in {}", path.display());
                map
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::collections::HashMap::new(),
            Err(e) => panic!("baseline: read {}: {e}", path.display()),
        };
        Baseline {
            dir: dir.to_path_buf(),
            map,
        }
    }

    /// Writes the whole map: temporary file, fdatasync, rename, directory fsync.
    fn save(&self) {
        let bytes = bincode::encode_to_vec(&self.map, bincode_config()).expect("baseline encode");
        debug_assert!(bytes.len() >= self.map.len() * (8 + VALUE_LEN));
        let tmp = self.dir.join(BASELINE_TMP);
        let mut f = std::fs::File::create(&tmp).expect("baseline create tmp");
        f.write_all(&bytes).expect("baseline write");
        f.sync_data().expect("baseline fdatasync");
        drop(f);
        std::fs::rename(&tmp, self.dir.join(BASELINE_FILE)).expect("baseline rename");
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .expect("baseline fsync dir");
    }
}

impl Store for Baseline {
    fn run(&mut self, ops: &[Op], t: &mut Tally) {
        let mut wrote = false;
        for op in ops {
            match *op {
                Op::Read(k) => {
                    t.saw(k, self.map.get(&k).copied());
                }
                Op::Insert(k, ver) | Op::Update(k, ver) => {
                    self.map.insert(k, value(k, ver));
                    wrote = true;
                }
                Op::Rmw(k) => {
                    match self.map.get_mut(&k) {
                        Some(v) => {
                            t.found += 1;
                            *v = rmw_value(k, v);
                        }
                        None => t.missing += 1,
                    }
                    wrote = true;
                }
            }
        }
        if wrote {
            self.save();
        }
    }

    fn close(self: Box<Self>) {}
}
