//! TEMPORARY (removed once the layout lands): compiles the new tracker rungs outside the crate.
#![allow(dead_code, unused_imports)]
mod mem {
    pub type SysVec<T> = allocator_api2::vec::Vec<T, std::alloc::System>;
    pub fn extend_bytes<A: allocator_api2::alloc::Allocator>(v: &mut allocator_api2::vec::Vec<u8, A>, src: &[u8]) {
        v.extend_from_slice(src);
    }
    pub mod track {
        use super::SysVec;
        #[derive(Debug, Clone, Copy)]
        pub struct Fallback {
            pub step: &'static str,
            pub errno: Option<i32>,
        }
        impl Fallback {
            pub fn os(step: &'static str, e: std::io::Error) -> Fallback {
                Fallback {
                    step,
                    errno: e.raw_os_error(),
                }
            }
            pub fn wrong(step: &'static str) -> Fallback {
                Fallback { step, errno: None }
            }
        }
        pub fn push_coalesced(out: &mut SysVec<(usize, usize)>, first: usize, a: usize, b: usize) {
            if out.len() > first {
                if let Some(last) = out.last_mut() {
                    if last.1 == a {
                        last.1 = b;
                        return;
                    }
                }
            }
            out.push((a, b));
        }
        pub fn ranges_insert(list: &mut SysVec<(usize, usize)>, a: usize, b: usize) {
            let i = list.partition_point(|&(_, e)| e < a);
            let j = list.partition_point(|&(s, _)| s <= b);
            if i == j {
                list.insert(i, (a, b));
                return;
            }
            let merged = (a.min(list[i].0), b.max(list[j - 1].1));
            list[i] = merged;
            list.drain(i + 1..j);
        }
        pub fn ranges_remove(list: &mut SysVec<(usize, usize)>, a: usize, b: usize) {
            let i = list.partition_point(|&(_, e)| e <= a);
            let j = list.partition_point(|&(s, _)| s < b);
            if i >= j {
                return;
            }
            let left = (list[i].0 < a).then(|| (list[i].0, a));
            let right = (list[j - 1].1 > b).then(|| (b, list[j - 1].1));
            list.drain(i..j);
            if let Some(r) = right {
                list.insert(i, r);
            }
            if let Some(l) = left {
                list.insert(i, l);
            }
        }
        #[path = "/work/wt-track/src/mem/track/hashed.rs"]
        pub mod hashed;
        #[path = "/work/wt-track/src/mem/track/soft_dirty.rs"]
        pub mod soft_dirty;
    }
}
mod sys {
    pub const OS_PAGE: usize = 4096;
    pub fn no_huge_pages(_a: usize, _l: usize) -> std::io::Result<()> {
        Ok(())
    }
    #[path = "/work/wt-track/src/sys/pagemap.rs"]
    pub mod pagemap;
    #[path = "/work/wt-track/src/sys/uffd.rs"]
    pub mod uffd;
}
