//! IP containment: which rule (if any) covers an address.
//!
//! A set of CIDR rules is flattened, at compile time, into sorted, disjoint
//! address ranges, each labelled with the lowest rule number that covers
//! it: a [`Matcher`]. A lookup is one search over a dense slice.
//!
//! Labels are local to the matcher (a policy's rule index; in a merge of
//! several policies, the rule's position counting the earlier policies'
//! rules first), so a matcher never needs renumbering when other policies
//! change: a compiled set shares the matchers of the policies a change did
//! not touch by reference, and a set compiled from the previous one
//! copies no ranges. "The lowest label" is "the first rule, in the order
//! written, of the first policy": what an operator reading the policies
//! expects to be reported.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// Label of a range no rule covers.
const NO_RULE: u32 = u32::MAX;

/// Sorted, disjoint ranges, each a start and a label: range `i` runs
/// from its start to the next one's, and addresses below the first start
/// are uncovered. Start and label side by side, so the label a search
/// ends on is in the cache line it read last; shared by reference, and
/// `None` when there are none (most policies have rules of one family
/// only), so copying a matcher touches no count for the other.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ranges<K>(Option<Arc<[(K, u32)]>>);

impl<K> Default for Ranges<K> {
    fn default() -> Self {
        Self(None)
    }
}

/// An IPv6 range start as two halves: 8-byte aligned, so a start and its
/// label take 24 bytes, not the 32 a `u128` would round them up to.
/// Compared as the `u128` it is (two loads and a wide compare, no branch
/// on the high half), which keeps the search's comparisons cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct V6Key {
    hi: u64,
    lo: u64,
}

impl V6Key {
    #[inline]
    fn get(self) -> u128 {
        u128::from(self.hi) << 64 | u128::from(self.lo)
    }
}

impl Ord for V6Key {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.get().cmp(&other.get())
    }
}

impl PartialOrd for V6Key {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn v6_key(a: u128) -> V6Key {
    // Truncations on purpose: the high and the low 64 bits.
    V6Key {
        hi: (a >> 64) as u64,
        lo: a as u64,
    }
}

impl<K: Copy + Ord> Ranges<K> {
    fn new(ranges: Vec<(K, u32)>) -> Self {
        Self((!ranges.is_empty()).then(|| ranges.into()))
    }

    fn as_slice(&self) -> &[(K, u32)] {
        self.0.as_deref().unwrap_or_default()
    }

    #[inline]
    fn lookup(&self, addr: K) -> Option<u32> {
        let ranges = self.0.as_deref()?;
        let i = ranges.partition_point(|&(k, _)| k <= addr);
        let (_, label) = *ranges.get(i.checked_sub(1)?)?;
        (label != NO_RULE).then_some(label)
    }

    /// The ranges of `(first, last, rule)` blocks that form a laminar
    /// family (any two nested or disjoint, as CIDR blocks are), their
    /// starts stored as `key` makes them.
    fn build<A: Copy + Ord>(
        mut items: Vec<(A, A, u32)>,
        successor: fn(A) -> Option<A>,
        key: fn(A) -> K,
    ) -> Self {
        // Outer blocks before the blocks they contain; equal blocks by rule.
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut out: Vec<(A, u32)> = Vec::with_capacity(items.len() * 2);
        // Open blocks, outermost first: (last address, label in force).
        let mut open: Vec<(A, u32)> = Vec::new();
        for (first, last, rule) in items {
            close(&mut open, &mut out, Some(first), successor);
            let label = open.last().map_or(NO_RULE, |o| o.1).min(rule);
            emit(&mut out, first, label);
            open.push((last, label));
        }
        close(&mut open, &mut out, None, successor);
        // Straight into the shared slice: an exact-size iterator, so no
        // intermediate vector.
        Self((!out.is_empty()).then(|| out.into_iter().map(|(a, l)| (key(a), l)).collect()))
    }

    /// The pointwise lowest label of several matchers' ranges, each part's
    /// labels first raised by its offset. Needs only the compiled ranges,
    /// never the rules they came from.
    fn merge(parts: &[(&Self, u32)]) -> Self {
        // Every range start of every part, in address order.
        let mut starts: Vec<(K, usize, u32)> =
            Vec::with_capacity(parts.iter().map(|(r, _)| r.as_slice().len()).sum());
        for (part, &(r, offset)) in parts.iter().enumerate() {
            starts.extend(r.as_slice().iter().map(|&(k, l)| {
                let label = if l == NO_RULE {
                    l
                } else {
                    l.saturating_add(offset)
                };
                (k, part, label)
            }));
        }
        starts.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        // The label each part has in force at the current address.
        let mut current = vec![NO_RULE; parts.len()];
        let mut out: Vec<(K, u32)> = Vec::with_capacity(starts.len());
        let mut i = 0;
        while let Some(&(at, _, _)) = starts.get(i) {
            while let Some(&(k, part, label)) = starts.get(i)
                && k == at
            {
                if let Some(slot) = current.get_mut(part) {
                    *slot = label;
                }
                i += 1;
            }
            emit(
                &mut out,
                at,
                current.iter().copied().min().unwrap_or(NO_RULE),
            );
        }
        Self::new(out)
    }

    /// Ranges some rule covers (gaps not counted).
    fn covered(&self) -> usize {
        self.as_slice()
            .iter()
            .filter(|&&(_, r)| r != NO_RULE)
            .count()
    }
}

/// Pops the open blocks that end before `before` (all of them for `None`);
/// after each, the enclosing block's label is in force again.
fn close<A: Copy + Ord>(
    open: &mut Vec<(A, u32)>,
    out: &mut Vec<(A, u32)>,
    before: Option<A>,
    successor: fn(A) -> Option<A>,
) {
    while let Some(&(last, _)) = open.last() {
        if before.is_some_and(|b| last >= b) {
            break;
        }
        open.pop();
        if let Some(next) = successor(last) {
            emit(out, next, open.last().map_or(NO_RULE, |o| o.1));
        }
    }
}

/// Appends a range start, keeping ranges maximal: a start at the same
/// position as the previous one replaces it, and a start that does not
/// change the label is dropped.
fn emit<A: Copy + Ord>(out: &mut Vec<(A, u32)>, at: A, label: u32) {
    if let Some(last) = out.last_mut()
        && last.0 == at
    {
        last.1 = label;
        let n = out.len();
        if n >= 2 && out[n - 2].1 == label {
            out.pop();
        }
        return;
    }
    match out.last() {
        Some(last) if last.1 == label => {}
        None if label == NO_RULE => {}
        _ => out.push((at, label)),
    }
}

/// One IP matcher: the ranges of a policy's rules, or the merge of an
/// associated set's `ip` policies. Cloned by reference (two counts).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Matcher {
    v4: Ranges<u32>,
    v6: Ranges<V6Key>,
}

impl Matcher {
    /// Compiles `(network, label)` pairs.
    pub(crate) fn build(rules: impl IntoIterator<Item = (IpNet, u32)>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (net, rule) in rules {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()), rule)),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()), rule)),
            }
        }
        Self {
            v4: Ranges::build(v4, |a| a.checked_add(1), |a| a),
            v6: Ranges::build(v6, |a| a.checked_add(1), v6_key),
        }
    }

    /// The matcher of several matchers' rules together, each part's labels
    /// raised by its offset: what [`Matcher::build`] gives for all their
    /// rules, labelled that way.
    pub(crate) fn merge(parts: &[(&Matcher, u32)]) -> Self {
        let v4: Vec<_> = parts.iter().map(|(m, o)| (&m.v4, *o)).collect();
        let v6: Vec<_> = parts.iter().map(|(m, o)| (&m.v6, *o)).collect();
        Self {
            v4: Ranges::merge(&v4),
            v6: Ranges::merge(&v6),
        }
    }

    /// The lowest label of a rule whose network contains `addr`.
    /// IPv4-mapped IPv6 addresses are looked up as IPv4 (SPEC §1.4).
    #[inline]
    pub(crate) fn lookup(&self, addr: IpAddr) -> Option<u32> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => self.v4.lookup(u32::from(v4)),
                None => self.v6.lookup(v6_key(u128::from(a))),
            },
        }
    }

    /// Address ranges some rule covers, for statistics: what the rules
    /// became after merging adjacent and nested blocks.
    pub(crate) fn covered(&self) -> usize {
        self.v4.covered() + self.v6.covered()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn m(rules: &[&str]) -> Matcher {
        Matcher::build(
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| (r.parse().unwrap(), i as u32)),
        )
    }

    fn at(m: &Matcher, a: &str) -> Option<u32> {
        m.lookup(a.parse().unwrap())
    }

    #[test]
    fn nested_blocks_report_the_lowest_rule_id() {
        let m = m(&["10.1.0.0/16", "10.0.0.0/8", "10.1.2.0/24"]);
        assert_eq!(at(&m, "10.1.2.3"), Some(0));
        assert_eq!(at(&m, "10.1.255.255"), Some(0));
        assert_eq!(at(&m, "10.2.0.0"), Some(1));
        assert_eq!(at(&m, "10.255.255.255"), Some(1));
        assert_eq!(at(&m, "11.0.0.0"), None);
        assert_eq!(at(&m, "9.255.255.255"), None);
    }

    #[test]
    fn inner_rule_with_lower_id_wins_inside_only() {
        let m = m(&["10.1.2.0/24", "10.0.0.0/8"]);
        assert_eq!(at(&m, "10.1.2.200"), Some(0));
        assert_eq!(at(&m, "10.1.3.0"), Some(1));
        assert_eq!(at(&m, "10.1.1.255"), Some(1));
    }

    #[test]
    fn edges_of_the_address_space() {
        let m1 = m(&["0.0.0.0/0", "255.255.255.255/32", "::/0", "ffff::/16"]);
        assert_eq!(at(&m1, "0.0.0.0"), Some(0));
        assert_eq!(at(&m1, "255.255.255.255"), Some(0));
        assert_eq!(at(&m1, "::"), Some(2));
        assert_eq!(at(&m1, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), Some(2));
        let m2 = m(&[
            "255.255.255.255/32",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        ]);
        assert_eq!(at(&m2, "255.255.255.255"), Some(0));
        assert_eq!(at(&m2, "255.255.255.254"), None);
        assert_eq!(at(&m2, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), Some(1));
        assert_eq!(at(&m2, "::"), None);
    }

    #[test]
    fn mapped_sources_match_ipv4_rules_only() {
        let m = m(&["192.0.2.0/24", "::/0"]);
        assert_eq!(at(&m, "::ffff:192.0.2.9"), Some(0));
        assert_eq!(at(&m, "::ffff:198.51.100.1"), None);
        assert_eq!(at(&m, "2001:db8::1"), Some(1));
    }

    #[test]
    fn adjacent_and_duplicate_blocks_merge() {
        let m = m(&["10.0.0.0/25", "10.0.0.128/25", "10.0.0.0/25"]);
        assert_eq!(at(&m, "10.0.0.0"), Some(0));
        assert_eq!(at(&m, "10.0.0.128"), Some(1));
        assert_eq!(at(&m, "10.0.1.0"), None);
        assert_eq!(m.covered(), 2);
    }

    #[test]
    fn empty_matcher_matches_nothing() {
        let m = m(&[]);
        assert_eq!(at(&m, "1.2.3.4"), None);
        assert_eq!(at(&m, "::1"), None);
        assert_eq!(m, Matcher::default());
    }

    #[test]
    fn a_merge_keeps_the_first_policys_rule_where_they_overlap() {
        let a = m(&["10.0.0.0/8", "2001:db8::/32"]);
        let b = m(&["10.1.0.0/16", "192.0.2.0/24"]);
        let merged = Matcher::merge(&[(&a, 0), (&b, 2)]);
        assert_eq!(at(&merged, "10.1.2.3"), Some(0));
        assert_eq!(at(&merged, "192.0.2.1"), Some(3));
        assert_eq!(at(&merged, "2001:db8::1"), Some(1));
        assert_eq!(at(&merged, "11.0.0.0"), None);
        // The later policy first: its rules win where both match.
        let merged = Matcher::merge(&[(&b, 0), (&a, 2)]);
        assert_eq!(at(&merged, "10.1.2.3"), Some(0));
        assert_eq!(at(&merged, "10.2.0.0"), Some(2));
    }

    /// A v4 or v6 block of a small address neighbourhood, so blocks nest,
    /// touch and repeat often.
    fn net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (0u32..64, 20u8..=32).prop_map(|(a, len)| {
                IpNet::V4(
                    ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 | a << 6), len)
                        .unwrap()
                        .trunc(),
                )
            }),
            (0u128..64, 116u8..=128).prop_map(|(a, len)| {
                IpNet::V6(
                    ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(0x2001_0db8 << 96 | a << 6), len)
                        .unwrap()
                        .trunc(),
                )
            }),
        ]
    }

    fn probes() -> Vec<IpAddr> {
        (0u32..(64 << 6) + 8)
            .step_by(3)
            .flat_map(|a| {
                [
                    IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | a)),
                    IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8 << 96 | u128::from(a))),
                ]
            })
            .collect()
    }

    proptest! {
        /// Merging compiled matchers answers as compiling all their rules
        /// at once, labelled in policy order, does.
        #[test]
        fn merging_matchers_equals_compiling_their_rules_together(
            policies in prop::collection::vec(prop::collection::vec(net(), 0..12), 1..5),
        ) {
            let mut offset = 0;
            let mut parts = Vec::new();
            let mut all = Vec::new();
            for rules in &policies {
                parts.push((
                    Matcher::build(rules.iter().enumerate().map(|(i, &n)| (n, i as u32))),
                    offset,
                ));
                all.extend(rules.iter().enumerate().map(|(i, &n)| (n, offset + i as u32)));
                offset += rules.len() as u32;
            }
            let refs: Vec<(&Matcher, u32)> = parts.iter().map(|(m, o)| (m, *o)).collect();
            let merged = Matcher::merge(&refs);
            let whole = Matcher::build(all);
            for addr in probes() {
                prop_assert_eq!(merged.lookup(addr), whole.lookup(addr), "{}", addr);
            }
            prop_assert_eq!(merged, whole);
        }
    }
}
