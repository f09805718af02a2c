//! Huge-page UMEM: with free huge pages reserved (`vm.nr_hugepages`), every
//! worker maps its UMEM with `MAP_HUGETLB` (its log says so and the
//! process's smaps shows huge-page mappings) and traffic flows through it.
//!
//! The test reserves the pages itself and restores the previous
//! `vm.nr_hugepages` on the way out, also when it fails (a drop guard).

use sluice_tests::{k8s, parse_backend_reply, require_root, topology, Sluice};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

fn meminfo(field: &str) -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    m.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/meminfo"))
}

/// Raises `vm.nr_hugepages` by `extra` and puts the old value back on drop.
struct Reserve {
    old: u64,
}

impl Reserve {
    fn new(extra: u64) -> Reserve {
        let old: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .expect("read vm.nr_hugepages")
            .trim()
            .parse()
            .expect("vm.nr_hugepages is a number");
        std::fs::write(NR_HUGEPAGES, (old + extra).to_string()).expect("write vm.nr_hugepages");
        Reserve { old }
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.old.to_string());
    }
}

#[test]
fn umem_on_huge_pages_forwards() {
    require_root();
    // Two workers' UMEMs (2048 frames × 4 KiB × 2 sockets each = 16 MiB)
    // plus room for other tests running beside this one.
    let reserve = Reserve::new(64);
    let free = meminfo("HugePages_Free");
    assert!(
        free * meminfo("Hugepagesize") >= 16 * 1024,
        "the kernel did not reserve 16 MiB of huge pages (HugePages_Free {free})"
    );
    let topo = topology!();
    let sluice = Sluice::start(&topo, &k8s::web_http(&[1, 2, 3]), &["--workers", "2"]);
    let logs = sluice.logs();
    assert_eq!(
        logs.matches("UMEM on huge pages").count(),
        2,
        "each worker's UMEM on huge pages:\n{logs}"
    );
    // The process really maps huge pages (hugetlb mappings show their page
    // size in smaps).
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", sluice.pid()))
        .expect("read the smaps of sluice");
    let huge_kb: u64 = meminfo("Hugepagesize");
    let want = format!("KernelPageSize:     {huge_kb} kB");
    assert!(
        smaps
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == want.split_whitespace().collect::<Vec<_>>()),
        "no huge-page mapping in /proc/{}/smaps",
        sluice.pid()
    );
    for i in 0..10 {
        let out = topo.curl("http://198.18.100.10/", None);
        assert!(out.success(), "request {i}: {out}");
        assert!(parse_backend_reply(&out.stdout).is_some(), "{out}");
    }
    let report = sluice.stop();
    assert!(report.status.is_some_and(|s| s.success()), "{report:?}");
    assert!(report.counter("tx") >= 10, "{:?}", report.counters);
    drop(reserve);
}
