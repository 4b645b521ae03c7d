//! Server-side assignors of KIP-848 consumer groups (Kafka's
//! `UniformAssignor` and `RangeAssignor`, written afresh): pure functions
//! from members, their subscriptions and the topics' partition counts to a
//! target assignment.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

/// Partitions by topic id.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// The assignors a member may name in `server_assignor`.
pub const ASSIGNORS: &[&str] = &["uniform", "range"];
/// The assignor used when no member names one (Kafka's default).
pub const DEFAULT_ASSIGNOR: &str = "uniform";

/// One member as the assignor sees it.
#[derive(Debug, Clone)]
pub struct AssignorMember<'a> {
    pub member_id: &'a str,
    /// Subscribed topic ids that exist.
    pub topics: BTreeSet<Uuid>,
    /// The member's previous target, for stickiness.
    pub previous: Option<&'a Assignment>,
}

/// Runs the named assignor. `partitions`: partition count by topic id.
pub fn assign(
    name: &str,
    members: &[AssignorMember<'_>],
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    match name {
        "range" => range(members, partitions),
        _ => uniform(members, partitions),
    }
}

/// Range: per topic, the subscribed members in member id order get
/// contiguous ranges, the first `count % members` one partition more.
pub fn range(
    members: &[AssignorMember<'_>],
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    let mut out = empty_assignments(members);
    for (&topic, &count) in partitions {
        let mut subscribers: Vec<&str> = members
            .iter()
            .filter(|m| m.topics.contains(&topic))
            .map(|m| m.member_id)
            .collect();
        if subscribers.is_empty() || count <= 0 {
            continue;
        }
        subscribers.sort_unstable();
        let n = subscribers.len() as i32;
        let (per, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in subscribers.iter().enumerate() {
            let take = per + i32::from((i as i32) < extra);
            if take > 0 {
                out.get_mut(*m)
                    .expect("member")
                    .entry(topic)
                    .or_default()
                    .extend(next..next + take);
            }
            next += take;
        }
    }
    out
}

/// Uniform: every partition of the subscribed topics to one subscriber,
/// balanced in count, keeping partitions where they were when that keeps
/// the balance.
pub fn uniform(
    members: &[AssignorMember<'_>],
    partitions: &BTreeMap<Uuid, i32>,
) -> BTreeMap<String, Assignment> {
    let mut out = empty_assignments(members);
    if members.is_empty() {
        return out;
    }
    let homogeneous = members.windows(2).all(|w| w[0].topics == w[1].topics);
    let all: Vec<(Uuid, i32)> = partitions
        .iter()
        .flat_map(|(&t, &n)| (0..n.max(0)).map(move |p| (t, p)))
        .collect();
    if homogeneous {
        let subscribed: Vec<(Uuid, i32)> = all
            .into_iter()
            .filter(|(t, _)| members[0].topics.contains(t))
            .collect();
        let n = members.len();
        let (per, extra) = (subscribed.len() / n, subscribed.len() % n);
        // Members keep up to `per` (or `per + 1` for the first `extra` that
        // had that many) of their previous partitions.
        let mut sorted: Vec<&AssignorMember<'_>> = members.iter().collect();
        sorted.sort_by_key(|m| m.member_id);
        let mut taken: BTreeSet<(Uuid, i32)> = BTreeSet::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut extras_left = extra;
        // Those with the most previous partitions claim the extra slots first.
        sorted.sort_by_key(|m| {
            let prev = m
                .previous
                .map(|a| a.values().map(|s| s.len()).sum::<usize>())
                .unwrap_or(0);
            (std::cmp::Reverse(prev), m.member_id)
        });
        let is_valid = |t: &Uuid, p: i32| partitions.get(t).is_some_and(|&c| p < c);
        for m in &sorted {
            let mut quota = per;
            let prev_count = m
                .previous
                .map(|a| {
                    a.iter()
                        .filter(|(t, _)| m.topics.contains(t))
                        .map(|(t, s)| s.iter().filter(|&&p| is_valid(t, p)).count())
                        .sum::<usize>()
                })
                .unwrap_or(0);
            if prev_count > per && extras_left > 0 {
                quota += 1;
                extras_left -= 1;
            }
            let mine = out.get_mut(m.member_id).expect("member");
            let mut kept = 0;
            if let Some(prev) = m.previous {
                'outer: for (t, parts) in prev {
                    if !m.topics.contains(t) {
                        continue;
                    }
                    for &p in parts {
                        if kept >= quota {
                            break 'outer;
                        }
                        if is_valid(t, p) && taken.insert((*t, p)) {
                            mine.entry(*t).or_default().insert(p);
                            kept += 1;
                        }
                    }
                }
            }
            counts.insert(m.member_id, kept);
        }
        // The rest, to the members furthest below their quota.
        let free = subscribed.into_iter().filter(|tp| !taken.contains(tp));
        sorted.sort_by_key(|m| m.member_id);
        for tp in free {
            let target = sorted
                .iter()
                .min_by_key(|m| (counts[m.member_id], m.member_id))
                .expect("members");
            let id = target.member_id;
            out.get_mut(id)
                .expect("member")
                .entry(tp.0)
                .or_default()
                .insert(tp.1);
            *counts.get_mut(id).expect("count") += 1;
        }
        return out;
    }
    // Heterogeneous subscriptions: partitions in order, each to the
    // subscriber with the fewest so far, its previous owner on ties.
    let mut counts: BTreeMap<&str, usize> = members.iter().map(|m| (m.member_id, 0)).collect();
    // The most constrained partitions (fewest subscribers) first.
    let subscribers = |t: &Uuid| members.iter().filter(|m| m.topics.contains(t)).count();
    let mut all = all;
    all.sort_by_key(|(t, p)| (subscribers(t), *t, *p));
    for (t, p) in all {
        let eligible: Vec<&AssignorMember<'_>> =
            members.iter().filter(|m| m.topics.contains(&t)).collect();
        let Some(&min) = eligible.iter().map(|m| &counts[m.member_id]).min() else {
            continue;
        };
        let owner = eligible.iter().find(|m| {
            counts[m.member_id] == min
                && m.previous
                    .is_some_and(|a| a.get(&t).is_some_and(|s| s.contains(&p)))
        });
        let chosen = owner.copied().unwrap_or_else(|| {
            eligible
                .iter()
                .filter(|m| counts[m.member_id] == min)
                .min_by_key(|m| m.member_id)
                .copied()
                .expect("eligible")
        });
        out.get_mut(chosen.member_id)
            .expect("member")
            .entry(t)
            .or_default()
            .insert(p);
        *counts.get_mut(chosen.member_id).expect("count") += 1;
    }
    out
}

/// Every member with nothing assigned yet: where both assignors start.
fn empty_assignments(members: &[AssignorMember<'_>]) -> BTreeMap<String, Assignment> {
    members
        .iter()
        .map(|m| (m.member_id.to_owned(), Assignment::new()))
        .collect()
}
