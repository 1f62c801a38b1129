//! The resource pool: which hosts run ranks and how many, after DeepSpeed's filters (`launcher/runner.py`:
//! `parse_inclusion_exclusion`, `parse_resource_filter`, then `--num_nodes` and `--num_gpus` in `main`).
//! Rank order is host order (the hostfile's), then slot order: global ranks 0..W-1.

use super::hostfile::HostEntry;
use std::fmt;

/// A host that runs ranks, with the slot ids it runs them on (ascending; one rank per slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSlots {
    pub name: String,
    pub slots: Vec<usize>,
}

/// The filters of one launch. Defaults: no include/exclude, every node, every slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// `--include NODE_SPEC[@NODE_SPEC...]`, `NODE_SPEC = NAME[:SLOT[,SLOT...]]`; empty: no filter.
    pub include: String,
    /// `--exclude`, same syntax; empty: no filter.
    pub exclude: String,
    /// `--num_nodes`: keep the first N hosts; `None` (-1): all.
    pub num_nodes: Option<usize>,
    /// `--num_gpus`: run slots `[0, N)` on every kept host, whatever the hostfile says; `None` (-1): the
    /// hostfile's slots.
    pub num_gpus: Option<usize>,
}

/// Why a selection cannot be resolved; the texts are DeepSpeed's where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    IncludeAndExclude,
    CountsWithFilters,
    /// `--num_nodes > 1` without a hostfile.
    NoExtraNodes {
        num_nodes: usize,
    },
    UnknownHost {
        host: String,
        known: Vec<String>,
    },
    UnknownSlot {
        host: String,
        slot: usize,
        slots: usize,
    },
    /// A node spec that does not parse (`which` is `--include` or `--exclude`).
    BadSpec {
        which: &'static str,
        spec: String,
        reason: String,
    },
    NoRanks,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::IncludeAndExclude => {
                f.write_str("include_str and exclude_str are mutually exclusive: give --include or --exclude, not both")
            }
            PoolError::CountsWithFilters => f.write_str(
                "Cannot specify num_nodes/gpus with include/exclude: --num_nodes/--num_gpus select the first hosts \
                 and slots, --include/--exclude name them",
            ),
            PoolError::NoExtraNodes { num_nodes } => write!(
                f,
                "Num nodes is >1 but no extra nodes available via hostfile (--num_nodes {num_nodes} without a \
                 hostfile; give --hostfile)"
            ),
            PoolError::UnknownHost { host, known } => {
                write!(f, "Hostname '{host}' not found in hostfile (hosts: {})", known.join(", "))
            }
            PoolError::UnknownSlot { host, slot, slots } => write!(
                f,
                "No slot '{slot}' specified on host '{host}' (it has {slots} slot(s): 0..{})",
                slots.saturating_sub(1)
            ),
            PoolError::BadSpec { which, spec, reason } => {
                write!(f, "{which} '{spec}': {reason} (syntax: NAME[:SLOT[,SLOT...]][@NAME[:SLOT...]...])")
            }
            PoolError::NoRanks => f.write_str("no ranks left to launch after --include/--exclude"),
        }
    }
}

/// Parses `NODE_SPEC[@NODE_SPEC...]` into hosts (first-appearance order) with their slot lists, merged per host,
/// sorted and deduplicated (DeepSpeed's `parse_node_config_list`); an empty list means the whole host.
fn parse_node_specs(which: &'static str, spec: &str) -> Result<Vec<(String, Vec<usize>)>, PoolError> {
    let bad = |reason: String| PoolError::BadSpec { which, spec: spec.to_string(), reason };
    let mut nodes: Vec<(String, Vec<usize>)> = Vec::new();
    for node in spec.split('@') {
        let (host, slots) = match node.split_once(':') {
            None => (node, Vec::new()),
            Some((_, list)) if list.contains(':') => return Err(bad(format!("'{node}' has more than one ':'"))),
            Some((host, list)) => {
                let slots = list
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().map_err(|_| bad(format!("slot '{s}' is not a slot number"))))
                    .collect::<Result<Vec<_>, _>>()?;
                (host, slots)
            }
        };
        match nodes.iter_mut().find(|(name, _)| name == host) {
            Some((_, existing)) => existing.extend(slots),
            None => nodes.push((host.to_string(), slots)),
        }
    }
    for (_, slots) in &mut nodes {
        slots.sort_unstable();
        slots.dedup();
    }
    Ok(nodes)
}

/// Applies `--include` or `--exclude` to the full pool (DeepSpeed's `parse_resource_filter`): every named host
/// and slot must exist; hosts keep the pool's order and hosts left without slots are dropped.
fn filter(pool: &[HostEntry], include: &str, exclude: &str) -> Result<Vec<HostSlots>, PoolError> {
    let full: Vec<HostSlots> =
        pool.iter().map(|h| HostSlots { name: h.name.clone(), slots: (0..h.slots).collect() }).collect();
    let (which, spec) = match (include.is_empty(), exclude.is_empty()) {
        (true, true) => return Ok(full),
        (false, false) => return Err(PoolError::IncludeAndExclude),
        (false, true) => ("--include", include),
        (true, false) => ("--exclude", exclude),
    };
    let mut selected: Vec<HostSlots> = if which == "--include" {
        full.iter().map(|h| HostSlots { name: h.name.clone(), slots: Vec::new() }).collect()
    } else {
        full.clone()
    };
    for (host, slots) in parse_node_specs(which, spec)? {
        let Some(index) = pool.iter().position(|h| h.name == host) else {
            return Err(PoolError::UnknownHost { host, known: pool.iter().map(|h| h.name.clone()).collect() });
        };
        if let Some(&slot) = slots.iter().find(|&&s| s >= pool[index].slots) {
            return Err(PoolError::UnknownSlot { host, slot, slots: pool[index].slots });
        }
        let kept = &mut selected[index].slots;
        match (which, slots.is_empty()) {
            ("--include", true) => kept.clone_from(&full[index].slots),
            ("--include", false) => *kept = slots,
            (_, true) => kept.clear(),
            (_, false) => kept.retain(|s| !slots.contains(s)),
        }
    }
    selected.retain(|h| !h.slots.is_empty());
    Ok(selected)
}

/// Resolves the hosts and slots to launch on. `from_hostfile` is false for the implicit single-host pool used
/// when there is no hostfile.
pub fn resolve(pool: &[HostEntry], from_hostfile: bool, selection: &Selection) -> Result<Vec<HostSlots>, PoolError> {
    let counted = selection.num_nodes.is_some() || selection.num_gpus.is_some();
    if counted && !(selection.include.is_empty() && selection.exclude.is_empty()) {
        return Err(PoolError::CountsWithFilters);
    }
    if let Some(num_nodes) = selection.num_nodes.filter(|&n| n > 1 && !from_hostfile) {
        return Err(PoolError::NoExtraNodes { num_nodes });
    }
    let mut hosts = filter(pool, &selection.include, &selection.exclude)?;
    if let Some(num_nodes) = selection.num_nodes {
        hosts.truncate(num_nodes);
    }
    if let Some(num_gpus) = selection.num_gpus {
        for host in &mut hosts {
            host.slots = (0..num_gpus).collect();
        }
    }
    hosts.retain(|h| !h.slots.is_empty());
    if hosts.is_empty() {
        return Err(PoolError::NoRanks);
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(hosts: &[(&str, usize)]) -> Vec<HostEntry> {
        hosts.iter().map(|&(name, slots)| HostEntry { name: name.to_string(), slots }).collect()
    }

    fn hosts(expected: &[(&str, &[usize])]) -> Vec<HostSlots> {
        expected.iter().map(|&(name, slots)| HostSlots { name: name.to_string(), slots: slots.to_vec() }).collect()
    }

    fn include(spec: &str) -> Selection {
        Selection { include: spec.to_string(), ..Selection::default() }
    }

    fn exclude(spec: &str) -> Selection {
        Selection { exclude: spec.to_string(), ..Selection::default() }
    }

    /// DeepSpeed's `test_parser_local` on a single 4-slot host.
    #[test]
    fn single_host_filters_match_deepspeed() {
        let p = pool(&[("worker-0", 4)]);
        let run = |s: Selection| resolve(&p, true, &s);
        assert_eq!(run(Selection::default()).unwrap(), hosts(&[("worker-0", &[0, 1, 2, 3])]));
        assert_eq!(run(exclude("worker-0:1")).unwrap(), hosts(&[("worker-0", &[0, 2, 3])]));
        assert_eq!(run(exclude("worker-0:1,2")).unwrap(), hosts(&[("worker-0", &[0, 3])]));
        assert_eq!(run(include("worker-0:1")).unwrap(), hosts(&[("worker-0", &[1])]));
        assert_eq!(run(include("worker-0:1,1")).unwrap(), hosts(&[("worker-0", &[1])]));
        assert_eq!(run(include("worker-0:1@worker-0:0,1")).unwrap(), hosts(&[("worker-0", &[0, 1])]));
        assert_eq!(run(include("worker-0")).unwrap(), hosts(&[("worker-0", &[0, 1, 2, 3])]));
        // Everything excluded: DeepSpeed returns an empty pool; there is nothing to launch.
        assert_eq!(run(exclude("worker-0")).unwrap_err(), PoolError::NoRanks);
        assert_eq!(run(exclude("worker-0:0,1,2,3")).unwrap_err(), PoolError::NoRanks);
    }

    /// DeepSpeed's `test_parser_multinode` and `test_parse_inclusion_exclusion`: two 4-slot hosts.
    #[test]
    fn multi_host_filters_match_deepspeed() {
        let p = pool(&[("worker-0", 4), ("worker-1", 4)]);
        let run = |s: Selection| resolve(&p, true, &s).unwrap();
        assert_eq!(run(Selection::default()), hosts(&[("worker-0", &[0, 1, 2, 3]), ("worker-1", &[0, 1, 2, 3])]));
        assert_eq!(run(include("worker-1:0,3")), hosts(&[("worker-1", &[0, 3])]));
        assert_eq!(run(exclude("worker-1")), hosts(&[("worker-0", &[0, 1, 2, 3])]));
        assert_eq!(run(exclude("worker-0:0,1@worker-1:3")), hosts(&[("worker-0", &[2, 3]), ("worker-1", &[0, 1, 2])]));
        assert_eq!(run(include("worker-0@worker-1:0,2")), hosts(&[("worker-0", &[0, 1, 2, 3]), ("worker-1", &[0, 2])]));
        assert_eq!(run(exclude("worker-0:1")), hosts(&[("worker-0", &[0, 2, 3]), ("worker-1", &[0, 1, 2, 3])]));
    }

    #[test]
    fn include_keeps_hostfile_order_not_spec_order() {
        let p = pool(&[("a", 2), ("b", 2), ("c", 2)]);
        assert_eq!(resolve(&p, true, &include("c:1@a")).unwrap(), hosts(&[("a", &[0, 1]), ("c", &[1])]));
    }

    /// DeepSpeed's `test_parser_errors` and `test_parse_inclusion_exclusion_errors`.
    #[test]
    fn unknown_hosts_and_slots_are_named() {
        let p = pool(&[("worker-0", 4), ("worker-1", 4)]);
        for s in [include("jeff"), exclude("jeff"), exclude("worker-1@worker-0:1@5")] {
            let err = resolve(&p, true, &s).unwrap_err();
            assert!(matches!(&err, PoolError::UnknownHost { host, .. } if host == "jeff" || host == "5"), "{err:?}");
            assert!(err.to_string().contains("not found in hostfile (hosts: worker-0, worker-1)"), "{err}");
        }
        assert_eq!(
            resolve(&p, true, &include("jeff")).unwrap_err().to_string().split(" (").next().unwrap(),
            "Hostname 'jeff' not found in hostfile"
        );
        for spec in ["worker-1:4", "worker-1:99", "worker-1:0,4"] {
            for s in [include(spec), exclude(spec)] {
                let err = resolve(&p, true, &s).unwrap_err();
                assert_eq!(err, PoolError::UnknownSlot { host: "worker-1".into(), slot: spec_max(spec), slots: 4 });
                assert!(err
                    .to_string()
                    .starts_with(&format!("No slot '{}' specified on host 'worker-1'", spec_max(spec))));
            }
        }
    }

    /// The largest slot of a `host:a,b` spec (the first one out of range in these tests).
    fn spec_max(spec: &str) -> usize {
        spec.split(':').nth(1).unwrap().split(',').map(|s| s.parse::<usize>().unwrap()).max().unwrap()
    }

    #[test]
    fn malformed_specs_are_refused() {
        let p = pool(&[("a", 2)]);
        for spec in ["a:x", "a:", "a:1:2", "a:-1"] {
            let err = resolve(&p, true, &include(spec)).unwrap_err();
            assert!(matches!(err, PoolError::BadSpec { which: "--include", .. }), "{spec}: {err:?}");
        }
    }

    #[test]
    fn include_and_exclude_are_mutually_exclusive() {
        let p = pool(&[("a", 2)]);
        let both = Selection { include: "a".into(), exclude: "a:0".into(), ..Selection::default() };
        assert_eq!(resolve(&p, true, &both).unwrap_err(), PoolError::IncludeAndExclude);
    }

    /// DeepSpeed's `test_num_plus_parser`: counts and filters do not mix.
    #[test]
    fn counts_with_filters_are_refused() {
        let p = pool(&[("localhost", 2)]);
        let counts = [(Some(1), None), (Some(1), Some(1)), (None, Some(1))];
        for (num_nodes, num_gpus) in counts {
            for mut s in [include("localhost"), exclude("localhost")] {
                s.num_nodes = num_nodes;
                s.num_gpus = num_gpus;
                assert_eq!(resolve(&p, true, &s).unwrap_err(), PoolError::CountsWithFilters);
            }
        }
    }

    #[test]
    fn num_nodes_takes_the_first_hosts_and_num_gpus_sets_slots_per_host() {
        let p = pool(&[("a", 4), ("b", 2), ("c", 8)]);
        let take = |num_nodes, num_gpus| resolve(&p, true, &Selection { num_nodes, num_gpus, ..Selection::default() });
        assert_eq!(take(Some(2), None).unwrap(), hosts(&[("a", &[0, 1, 2, 3]), ("b", &[0, 1])]));
        assert_eq!(
            take(Some(5), None).unwrap(),
            hosts(&[("a", &[0, 1, 2, 3]), ("b", &[0, 1]), ("c", &(0..8).collect::<Vec<_>>())])
        );
        assert_eq!(take(None, Some(3)).unwrap(), hosts(&[("a", &[0, 1, 2]), ("b", &[0, 1, 2]), ("c", &[0, 1, 2])]));
        assert_eq!(take(Some(1), Some(2)).unwrap(), hosts(&[("a", &[0, 1])]));
    }

    #[test]
    fn without_a_hostfile_only_one_node_exists() {
        let local = pool(&[("localhost", 2)]);
        let two_nodes = Selection { num_nodes: Some(2), ..Selection::default() };
        assert_eq!(resolve(&local, false, &two_nodes).unwrap_err(), PoolError::NoExtraNodes { num_nodes: 2 });
        let one_node = Selection { num_nodes: Some(1), num_gpus: Some(3), ..Selection::default() };
        assert_eq!(resolve(&local, false, &one_node).unwrap(), hosts(&[("localhost", &[0, 1, 2])]));
        assert_eq!(resolve(&local, false, &include("localhost:1")).unwrap(), hosts(&[("localhost", &[1])]));
    }
}
