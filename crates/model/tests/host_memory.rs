//! `model::host_memory` in a process of its own, on its main thread before any other (it
//! changes `malloc` for the whole process, as the binaries do first thing; so no test harness,
//! whose threads would take arenas of their own): the heap reserved in huge pages backs what
//! is allocated next with 2 MiB pages at the first touch, values intact.

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    memory_allocated_after_the_reserve_is_faulted_in_huge_pages();
    println!("host_memory: ok");
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn memory_allocated_after_the_reserve_is_faulted_in_huge_pages() {
    use model::host_memory::{reserve_huge_page_heap, retain_freed_memory};
    // Without the retained heap the reserve would be trimmed away: it refuses.
    assert_eq!(reserve_huge_page_heap(64 << 20), 0);
    assert!(retain_freed_memory());
    let advised = reserve_huge_page_heap(256 << 20);
    assert!(advised >= 200 << 20, "advised {advised} bytes");

    let len = 64 << 20;
    let mut v = vec![0u8; len];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    assert!(v.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !(thp.contains("[madvise]") || thp.contains("[always]")) {
        eprintln!("skipped the page check: transparent huge pages are off here ({thp:?})");
        return;
    }
    // The huge pages of the mappings the vector overlaps (the advice splits the heap's).
    let (start, end) = (v.as_ptr() as usize, v.as_ptr() as usize + len);
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut overlaps = false;
    let mut huge = 0;
    for line in smaps.lines() {
        let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
        if let Some((a, b)) = range {
            let parse = |h: &str| usize::from_str_radix(h, 16).ok();
            if let (Some(a), Some(b)) = (parse(a), parse(b)) {
                overlaps = a < end && start < b;
                continue;
            }
        }
        if let (true, Some(kb)) = (overlaps, line.strip_prefix("AnonHugePages:")) {
            huge += kb
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .unwrap()
                << 10;
        }
    }
    // Without the advice a `madvise` system gives none; with it, all but the partial pages at
    // the ends unless the kernel found no free 2 MiB pages (a quarter is asked, to allow for
    // a fragmented machine).
    assert!(huge >= len / 4, "{huge} of {len} bytes in huge pages");
    drop(v);
}
