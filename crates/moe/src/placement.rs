//! Expert placement in the spirit of DeepSeek's EPLB: replicate hot experts into redundant
//! slots, then pack the slots onto devices so that the busiest device is as idle as possible.
//!
//! 1. **Replicate.** Every expert starts with one replica. Each of the R redundant slots goes
//!    to the expert with the highest load per replica; its load is then split evenly across
//!    its replicas.
//! 2. **Pack.** With `(E + R) / G` slots per device, replicas are placed heaviest first onto
//!    the least loaded device that still has a free slot (longest-processing-time first).
//! 3. **Nodes (optional, hierarchical).** Expert groups (the groups of group-limited routing)
//!    are first packed onto nodes the same way, so a token's kept groups stay node-local;
//!    steps 1-2 then run inside each node with `R / nodes` slots over `G / nodes` devices.

use crate::balance::{load_summary, LoadSummary};
use crate::error::{config_err, Result};

/// Hierarchical placement: experts are packed by group onto nodes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeGrouping {
    /// Number of nodes (must divide `n_group`, the devices and the redundant slots).
    pub nodes: usize,
    /// Number of expert groups (contiguous blocks of `E / n_group` experts).
    pub n_group: usize,
}

/// Inputs of [`plan_placement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementOptions {
    /// Redundant expert slots R (replicas beyond one per expert).
    pub redundant_slots: usize,
    /// Devices G; `E + R` must be divisible by G.
    pub devices: usize,
    /// Optional node grouping.
    pub nodes: Option<NodeGrouping>,
}

/// The result: which expert replicas live on which device, and the devices' loads.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Replicas per expert (each carries `load / replicas`).
    pub replicas: Vec<usize>,
    /// Expert id of every slot, per device.
    pub devices: Vec<Vec<usize>>,
    /// Load per device.
    pub device_loads: Vec<f64>,
}

impl Placement {
    /// max/mean etc. of the device loads.
    pub fn summary(&self) -> LoadSummary {
        load_summary(&self.device_loads)
    }
}

/// The baseline: experts `[d * E/G, (d+1) * E/G)` on device d, no replication.
pub fn contiguous_placement(loads: &[f64], devices: usize) -> Result<Placement> {
    let e = loads.len();
    if devices == 0 || !e.is_multiple_of(devices) {
        return Err(config_err(
            "devices",
            format!("{e} experts do not split evenly over {devices} devices"),
        ));
    }
    let per = e / devices;
    let devs: Vec<Vec<usize>> = (0..devices)
        .map(|d| (d * per..(d + 1) * per).collect())
        .collect();
    let device_loads = devs
        .iter()
        .map(|d| d.iter().map(|&x| loads[x]).sum())
        .collect();
    Ok(Placement {
        replicas: vec![1; e],
        devices: devs,
        device_loads,
    })
}

/// Plans replication and packing (see the module docs) for per-expert `loads`.
pub fn plan_placement(loads: &[f64], opts: &PlacementOptions) -> Result<Placement> {
    let e = loads.len();
    let (r, g) = (opts.redundant_slots, opts.devices);
    if g == 0 || !(e + r).is_multiple_of(g) {
        return Err(config_err(
            "devices",
            format!("{e} experts + {r} redundant slots do not split evenly over {g} devices"),
        ));
    }
    let mut placement = Placement {
        replicas: vec![1; e],
        devices: vec![Vec::new(); g],
        device_loads: vec![0.0; g],
    };
    let Some(ng) = opts.nodes else {
        pack_into(&(0..e).collect::<Vec<_>>(), loads, r, 0, g, &mut placement);
        return Ok(placement);
    };
    let (n, groups) = (ng.nodes, ng.n_group);
    if n == 0
        || groups == 0
        || !e.is_multiple_of(groups)
        || groups % n != 0
        || g % n != 0
        || r % n != 0
    {
        return Err(config_err(
            "nodes",
            format!(
                "{n} nodes must divide n_group ({groups}), devices ({g}) and redundant slots \
                 ({r}); n_group must divide the {e} experts"
            ),
        ));
    }
    let per_group = e / groups;
    let group_loads: Vec<f64> = loads.chunks(per_group).map(|c| c.iter().sum()).collect();
    let node_of_group = lpt(&group_loads, n, groups / n);
    let devs_per_node = g / n;
    for node in 0..n {
        let experts: Vec<usize> = (0..groups)
            .filter(|&grp| node_of_group[grp] == node)
            .flat_map(|grp| grp * per_group..(grp + 1) * per_group)
            .collect();
        pack_into(
            &experts,
            loads,
            r / n,
            node * devs_per_node,
            devs_per_node,
            &mut placement,
        );
    }
    Ok(placement)
}

/// Replicates `experts` into `r` extra slots and packs them onto devices
/// `first_dev..first_dev + g`.
fn pack_into(
    experts: &[usize],
    loads: &[f64],
    r: usize,
    first_dev: usize,
    g: usize,
    p: &mut Placement,
) {
    for _ in 0..r {
        let hottest = experts
            .iter()
            .copied()
            .max_by(|&a, &b| {
                let (la, lb) = (
                    loads[a] / p.replicas[a] as f64,
                    loads[b] / p.replicas[b] as f64,
                );
                la.total_cmp(&lb).then(b.cmp(&a))
            })
            .expect("at least one expert");
        p.replicas[hottest] += 1;
    }
    let slots: Vec<(usize, f64)> = experts
        .iter()
        .flat_map(|&x| std::iter::repeat_n((x, loads[x] / p.replicas[x] as f64), p.replicas[x]))
        .collect();
    let slot_loads: Vec<f64> = slots.iter().map(|s| s.1).collect();
    let assignment = lpt(&slot_loads, g, slots.len() / g);
    for (&(x, l), &d) in slots.iter().zip(&assignment) {
        p.devices[first_dev + d].push(x);
        p.device_loads[first_dev + d] += l;
    }
}

/// Longest-processing-time packing of `items` onto `bins` bins of `capacity` items each;
/// returns the bin of every item.
fn lpt(items: &[f64], bins: usize, capacity: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| items[b].total_cmp(&items[a]).then(a.cmp(&b)));
    let (mut load, mut used) = (vec![0f64; bins], vec![0usize; bins]);
    let mut bin_of = vec![0; items.len()];
    for i in order {
        let b = (0..bins)
            .filter(|&b| used[b] < capacity)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))
            .expect("capacity covers all items");
        bin_of[i] = b;
        load[b] += items[i];
        used[b] += 1;
    }
    bin_of
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_splits_the_hot_expert() {
        // One expert carries half the load; 2 redundant slots split it three ways.
        let mut loads = vec![1.0; 6];
        loads[0] = 6.0;
        let p = plan_placement(
            &loads,
            &PlacementOptions {
                redundant_slots: 2,
                devices: 4,
                nodes: None,
            },
        )
        .unwrap();
        assert_eq!(p.replicas[0], 3);
        assert_eq!(p.devices.iter().map(Vec::len).sum::<usize>(), 8);
        let total: f64 = p.device_loads.iter().sum();
        assert!((total - 11.0).abs() < 1e-9);
        let base = contiguous_placement(&loads[..4], 4).unwrap();
        assert!(base.summary().max_over_mean > 2.0);
        assert!(p.summary().max_over_mean < 1.5, "{:?}", p.device_loads);
    }

    #[test]
    fn nodes_keep_groups_whole() {
        let loads: Vec<f64> = (0..16).map(|i| 1.0 + (i % 5) as f64).collect();
        let p = plan_placement(
            &loads,
            &PlacementOptions {
                redundant_slots: 4,
                devices: 4,
                nodes: Some(NodeGrouping {
                    nodes: 2,
                    n_group: 4,
                }),
            },
        )
        .unwrap();
        // Every group's experts sit on the devices of exactly one node.
        for grp in 0..4 {
            let nodes: std::collections::BTreeSet<usize> = (0..4)
                .filter(|&d| p.devices[d].iter().any(|&x| x / 4 == grp))
                .map(|d| d / 2)
                .collect();
            assert_eq!(nodes.len(), 1, "group {grp} spans nodes {nodes:?}");
        }
    }
}
