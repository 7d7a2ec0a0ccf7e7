//! The per-execution table of synthetic names: which address in `127.77.0.0/16` stands for
//! which host name.
//!
//! The stub resolver hands an address out the first time a name is asked for (from
//! `127.77.0.1` upward, first asked first served) and the transparent listener maps the
//! address a connection was headed for back to the name. An address is never reused within
//! an execution, so a name stays stable for as long as a client may have cached it. The
//! table is bounded ([`SyntheticNames::CAPACITY`]): a sandbox that asks for endless names
//! (labels full of data, under `allow_all`) fills it and then gets SERVFAIL, never more
//! memory.

use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Name ↔ address, shared by the resolver and the transparent listener as
/// `Arc<SyntheticNames>`.
#[derive(Debug, Default)]
pub struct SyntheticNames {
    table: Mutex<Table>,
    /// Whether the "table is full" warning was logged (once per execution).
    full_reported: AtomicBool,
}

#[derive(Debug, Default)]
struct Table {
    by_name: HashMap<Arc<str>, Ipv4Addr>,
    /// The name of `FIRST + i` at index `i`.
    by_offset: Vec<Arc<str>>,
}

impl SyntheticNames {
    /// The range synthetic addresses come from: loopback, so the eBPF and nftables walls,
    /// which admit only loopback, need no change.
    pub const RANGE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(127, 77, 0, 0), 16);
    /// Most names one execution gets addresses for.
    pub const CAPACITY: usize = 16384;
    /// The first address handed out (`.0` is the network address, never used).
    const FIRST: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 1);

    pub fn new() -> Self {
        Self::default()
    }

    /// The address for `name` (normalised: lowercase ASCII, no trailing dot — the form
    /// `UrlHost::parse` gives): the one it already has, or the next free one. `None` once
    /// [`Self::CAPACITY`] names have addresses.
    pub fn address_for(&self, name: &str) -> Option<Ipv4Addr> {
        let mut table = self.lock();
        if let Some(address) = table.by_name.get(name) {
            return Some(*address);
        }
        if table.by_offset.len() >= Self::CAPACITY {
            drop(table);
            if !self.full_reported.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    capacity = Self::CAPACITY,
                    "dns: the execution asked for more names than the stub resolver hands out addresses for; further new names get SERVFAIL"
                );
            }
            return None;
        }
        let offset = u32::try_from(table.by_offset.len()).ok()?;
        let address = Ipv4Addr::from(u32::from(Self::FIRST) + offset);
        let name: Arc<str> = Arc::from(name);
        table.by_offset.push(Arc::clone(&name));
        table.by_name.insert(name, address);
        Some(address)
    }

    /// The name `address` was handed out for, if it was.
    pub fn name_of(&self, address: Ipv4Addr) -> Option<String> {
        let offset = u32::from(address).checked_sub(u32::from(Self::FIRST))?;
        let offset = usize::try_from(offset).ok()?;
        self.lock()
            .by_offset
            .get(offset)
            .map(|name| name.to_string())
    }

    /// How many names have addresses.
    pub fn len(&self) -> usize {
        self.lock().by_offset.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table stays consistent whatever panicked while holding it (both maps are
    /// updated after every check), so a poisoned lock is taken over.
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::SyntheticNames;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    #[test]
    fn addresses_go_upward_from_127_77_0_1_and_stay_stable() {
        let names = SyntheticNames::new();
        assert!(names.is_empty());
        assert_eq!(
            names.address_for("api.example.com"),
            Some(Ipv4Addr::new(127, 77, 0, 1))
        );
        assert_eq!(
            names.address_for("files.example.net"),
            Some(Ipv4Addr::new(127, 77, 0, 2))
        );
        assert_eq!(
            names.address_for("api.example.com"),
            Some(Ipv4Addr::new(127, 77, 0, 1))
        );
        assert_eq!(names.len(), 2);
        assert_eq!(
            names.name_of(Ipv4Addr::new(127, 77, 0, 1)).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            names.name_of(Ipv4Addr::new(127, 77, 0, 2)).as_deref(),
            Some("files.example.net")
        );
        for unmapped in [
            Ipv4Addr::new(127, 77, 0, 0),
            Ipv4Addr::new(127, 77, 0, 3),
            Ipv4Addr::new(127, 77, 255, 255),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(255, 255, 255, 255),
        ] {
            assert_eq!(names.name_of(unmapped), None, "{unmapped}");
        }
        assert!(SyntheticNames::RANGE.contains(&Ipv4Addr::new(127, 77, 0, 1)));
        assert_eq!(SyntheticNames::RANGE.to_string(), "127.77.0.0/16");
    }

    #[test]
    fn the_table_holds_16384_names_inside_the_range_then_refuses_new_ones() {
        let names = SyntheticNames::new();
        let mut last = None;
        for i in 0..SyntheticNames::CAPACITY {
            let address = names.address_for(&format!("n{i}.example")).expect("room");
            assert!(SyntheticNames::RANGE.contains(&address), "{address}");
            last = Some(address);
        }
        assert_eq!(last, Some(Ipv4Addr::new(127, 77, 64, 0)));
        assert_eq!(names.len(), SyntheticNames::CAPACITY);
        assert_eq!(names.address_for("one-more.example"), None);
        assert_eq!(names.address_for("and-another.example"), None);
        // Names that have an address keep it.
        assert_eq!(
            names.address_for("n0.example"),
            Some(Ipv4Addr::new(127, 77, 0, 1))
        );
        assert_eq!(
            names.name_of(Ipv4Addr::new(127, 77, 64, 0)).as_deref(),
            Some("n16383.example")
        );
        assert_eq!(names.name_of(Ipv4Addr::new(127, 77, 64, 1)), None);
        assert_eq!(names.len(), SyntheticNames::CAPACITY);
    }

    #[test]
    fn concurrent_askers_get_one_address_per_name() {
        let names = Arc::new(SyntheticNames::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let names = Arc::clone(&names);
                std::thread::spawn(move || {
                    // Every thread asks for the same 200 names, each in its own order.
                    (0..200)
                        .map(|i| {
                            let i = (i * 7 + t * 13) % 200;
                            let name = format!("h{i}.example");
                            (name.clone(), names.address_for(&name).expect("room"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let answers: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("thread"))
            .collect();
        assert_eq!(names.len(), 200);
        for (name, address) in answers {
            assert_eq!(names.name_of(address).as_deref(), Some(name.as_str()));
            assert_eq!(names.address_for(&name), Some(address));
        }
        let mut addresses: Vec<_> = (1..=200)
            .map(|i| Ipv4Addr::new(127, 77, 0, i as u8))
            .map(|a| names.name_of(a).expect("every address of the 200 is used"))
            .collect();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), 200);
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn the_table_is_shared_across_threads() {
        assert_send_sync::<SyntheticNames>();
    }
}
