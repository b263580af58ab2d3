//! The commit path's word differ, measured alone: CPU time per 4 KiB page for typical changes,
//! with the pages in cache (4 pages, compared over and over) and from memory (16,384 pages,
//! 128 MiB, each pass evicting the last). Issue 10 asks for 0.1-0.7 us per page.
//!
//! Run: `cargo run --release --example diff_cost` (best of 5 passes per cell).

use std::time::Instant;

type Page = [u64; 512];
/// A named change applied to page `i`.
type Change = (&'static str, fn(&mut Page, usize));

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    println!("| change | pages in cache (4 pages) | pages from memory (16,384 pages) |");
    println!("|---|---:|---:|");
    let cases: [Change; 5] = [
        ("unchanged", |_, _| {}),
        ("one word", |p, i| p[(i * 61) % 512] ^= 1),
        ("8 scattered words", |p, i| {
            (0..8).for_each(|k| p[(k * 61 + i) % 512] ^= 1)
        }),
        ("one 64-byte run", |p, _| p[16..24].iter_mut().for_each(|w| *w ^= 1)),
        ("every other word (journaled whole)", |p, _| {
            p.iter_mut().step_by(2).for_each(|w| *w ^= 1)
        }),
    ];
    let mut rng = Rng(3);
    for (what, change) in cases {
        let mut cells = Vec::new();
        for n in [4usize, 16_384] {
            let base: Vec<Page> = (0..n).map(|_| std::array::from_fn(|_| rng.next())).collect();
            let mut new = base.clone();
            new.iter_mut().enumerate().for_each(|(i, p)| change(p, i));
            let reps = (1 << 16) / n;
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                let mut runs = 0;
                for _ in 0..reps {
                    for i in 0..n {
                        runs += snapheap::fuzzing::diff_words(&new[i], &base[i]).1;
                    }
                }
                std::hint::black_box(runs);
                best = best.min(t.elapsed().as_secs_f64() * 1e6 / (n * reps) as f64);
            }
            cells.push(format!("{best:.3} us"));
        }
        println!("| {what} | {} | {} |", cells[0], cells[1]);
    }
}
