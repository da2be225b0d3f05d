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
//!
//! Both address families of a matcher live in one allocation (see
//! [`Block`]): a decision over many deployments is bound by cache misses,
//! and one pointer in the deployment's hot record, with where the IPv6
//! ranges start kept beside it, is the fewest lines a lookup can touch.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// Label of a range no rule covers.
const NO_RULE: u32 = u32::MAX;

/// An IPv6 range as stored: the start's high and low halves, then the
/// label. Three words rather than a `u128` and a `u32`, which would round
/// up to 32 bytes; compared as the `u128` it is (two loads and a wide
/// compare, no branch on the high half).
type V6Entry = [u64; 3];

/// The ranges of `(first, last, rule)` blocks that form a laminar family
/// (any two nested or disjoint, as CIDR blocks are): sorted, disjoint
/// range starts, each with the label in force from there to the next
/// start; addresses below the first start are uncovered.
fn ranges<A: Copy + Ord>(
    mut items: Vec<(A, A, u32)>,
    successor: fn(A) -> Option<A>,
) -> Vec<(A, u32)> {
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
    out
}

/// The pointwise lowest label of several parts' ranges, each part's labels
/// first raised by its offset. Needs only compiled ranges, never the rules
/// they came from.
fn merge<E, K: Copy + Ord>(parts: &[(&[E], u32)], decode: fn(&E) -> (K, u32)) -> Vec<(K, u32)> {
    // Every range start of every part, in address order.
    let mut starts: Vec<(K, usize, u32)> =
        Vec::with_capacity(parts.iter().map(|(r, _)| r.len()).sum());
    for (part, &(r, offset)) in parts.iter().enumerate() {
        starts.extend(r.iter().map(|e| {
            let (k, l) = decode(e);
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
    out
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

/// The ranges of a matcher, both families in one allocation: first the
/// IPv4 ranges, one word each (start in the high half, label in the low),
/// then the IPv6 ranges, three words each ([`V6Entry`]). Where one family
/// ends is kept beside the pointer (in [`Matcher`], and in the
/// deployment's hot record), not in the block: a header there would be one
/// more dependent load before the search could start. `None` when both
/// families are empty. Cloned by reference (one count).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Block(Option<Arc<[u64]>>);

impl Block {
    /// The lowest label of a rule whose network contains `addr`, the first
    /// `v4_words` words being the IPv4 ranges. IPv4-mapped IPv6 addresses
    /// are looked up as IPv4 (SPEC §1.4).
    #[inline]
    pub(crate) fn lookup(&self, v4_words: u32, addr: IpAddr) -> Option<u32> {
        let (v4, v6) = self.0.as_deref()?.split_at_checked(v4_words as usize)?;
        match addr {
            IpAddr::V4(a) => lookup_v4(v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => lookup_v4(v4, u32::from(a)),
                None => lookup_v6(v6.as_chunks::<3>().0, u128::from(a)),
            },
        }
    }
}

#[inline]
fn lookup_v4(ranges: &[u64], addr: u32) -> Option<u32> {
    let i = ranges.partition_point(|&w| v4_start(w) <= addr);
    label(v4_label(*ranges.get(i.checked_sub(1)?)?))
}

#[inline]
fn lookup_v6(ranges: &[V6Entry], addr: u128) -> Option<u32> {
    let i = ranges.partition_point(|e| v6_start(e) <= addr);
    label(v6_label(ranges.get(i.checked_sub(1)?)?))
}

#[inline]
fn label(l: u32) -> Option<u32> {
    (l != NO_RULE).then_some(l)
}

// The word layouts of `Block`; the truncating casts take the halves on
// purpose.
#[inline]
fn v4_start(w: u64) -> u32 {
    (w >> 32) as u32
}

#[inline]
fn v4_label(w: u64) -> u32 {
    w as u32
}

#[inline]
fn v6_start(e: &V6Entry) -> u128 {
    u128::from(e[0]) << 64 | u128::from(e[1])
}

#[inline]
fn v6_label(e: &V6Entry) -> u32 {
    e[2] as u32
}

/// One IP matcher: the ranges of a policy's rules, or the merge of an
/// associated set's `ip` policies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Matcher {
    block: Block,
    /// Words of IPv4 ranges at the start of `block`.
    v4_words: u32,
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
        Self::pack(
            &ranges(v4, |a| a.checked_add(1)),
            &ranges(v6, |a| a.checked_add(1)),
        )
    }

    /// The matcher of several matchers' rules together, each part's labels
    /// raised by its offset: what [`Matcher::build`] gives for all their
    /// rules, labelled that way.
    pub(crate) fn merge(parts: &[(&Matcher, u32)]) -> Self {
        let v4: Vec<_> = parts.iter().map(|(m, o)| (m.v4(), *o)).collect();
        let v6: Vec<_> = parts.iter().map(|(m, o)| (m.v6(), *o)).collect();
        Self::pack(
            &merge(&v4, |&w| (v4_start(w), v4_label(w))),
            &merge(&v6, |e| (v6_start(e), v6_label(e))),
        )
    }

    fn pack(v4: &[(u32, u32)], v6: &[(u128, u32)]) -> Self {
        if v4.is_empty() && v6.is_empty() {
            return Self::default();
        }
        let mut words = Vec::with_capacity(v4.len() + 3 * v6.len());
        words.extend(v4.iter().map(|&(a, l)| u64::from(a) << 32 | u64::from(l)));
        for &(a, l) in v6 {
            // The high and the low half of the start.
            words.extend([(a >> 64) as u64, a as u64, u64::from(l)]);
        }
        Self {
            block: Block(Some(words.into())),
            // At most one range per rule boundary; snapshots are far below
            // 2^32 rules.
            v4_words: u32::try_from(v4.len()).unwrap_or(u32::MAX),
        }
    }

    fn words(&self) -> &[u64] {
        self.block.0.as_deref().unwrap_or_default()
    }

    fn v4(&self) -> &[u64] {
        self.words()
            .get(..self.v4_words as usize)
            .unwrap_or_default()
    }

    fn v6(&self) -> &[V6Entry] {
        self.words()
            .get(self.v4_words as usize..)
            .unwrap_or_default()
            .as_chunks::<3>()
            .0
    }

    /// The block and where its IPv6 ranges start, for a record that lays
    /// them out itself.
    pub(crate) fn parts(&self) -> (Block, u32) {
        (self.block.clone(), self.v4_words)
    }

    /// The lowest label of a rule whose network contains `addr`
    /// (decisions read the block from the hot record instead).
    #[cfg(test)]
    fn lookup(&self, addr: IpAddr) -> Option<u32> {
        self.block.lookup(self.v4_words, addr)
    }

    /// Address ranges some rule covers, for statistics: what the rules
    /// became after merging adjacent and nested blocks.
    pub(crate) fn covered(&self) -> usize {
        let v4 = self.v4().iter().filter(|&&w| v4_label(w) != NO_RULE);
        let v6 = self.v6().iter().filter(|e| v6_label(e) != NO_RULE);
        v4.count() + v6.count()
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
