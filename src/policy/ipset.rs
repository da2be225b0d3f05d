//! IP containment: which rule (if any) covers an address.
//!
//! A set of CIDR rules is flattened, at compile time, into sorted, disjoint
//! address ranges, each labelled with the lowest rule id that covers it.
//! The ranges of every matcher in a snapshot live in one flat table per
//! address family ([`IpTables`]); a matcher is just a [`Spans`] (offset and
//! length into those tables), small enough to be copied into each
//! deployment's hot record. A lookup is then one search over a dense slice,
//! with no pointer to chase on the way.
//!
//! Rule ids are global across the snapshot and follow snapshot order, so
//! "the lowest id" is "the first rule, in the order written, of the first
//! policy": what an operator reading the policies expects to be reported.

use std::net::IpAddr;

use ipnet::IpNet;

/// Label of a range no rule covers.
const NO_RULE: u32 = u32::MAX;

/// Where one matcher's ranges sit in a [`Table`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    off: u32,
    len: u32,
}

/// A matcher's ranges in both families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Spans {
    v4: Span,
    v6: Span,
}

/// Sorted, disjoint ranges of many matchers: within a span,
/// `keys[i]..keys[i+1]` is labelled `labels[i]`, and addresses below the
/// span's first key are uncovered.
#[derive(Debug, Default)]
struct Table<A> {
    keys: Vec<A>,
    labels: Vec<u32>,
}

impl<A: Copy + Ord> Table<A> {
    fn with_capacity(ranges: usize) -> Self {
        Self {
            keys: Vec::with_capacity(ranges),
            labels: Vec::with_capacity(ranges),
        }
    }

    #[inline]
    fn lookup(&self, span: Span, addr: A) -> Option<u32> {
        let (off, len) = (span.off as usize, span.len as usize);
        let keys = self.keys.get(off..off + len)?;
        let i = keys.partition_point(|&k| k <= addr);
        let label = *self.labels.get(off + i.checked_sub(1)?)?;
        (label != NO_RULE).then_some(label)
    }

    /// Appends the ranges of `(first, last, rule)` blocks that form a
    /// laminar family (any two nested or disjoint, as CIDR blocks are).
    fn push(&mut self, mut items: Vec<(A, A, u32)>, successor: fn(A) -> Option<A>) -> Span {
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
        let span = Span {
            off: u32::try_from(self.keys.len()).unwrap_or(u32::MAX),
            len: u32::try_from(out.len()).unwrap_or(0),
        };
        for (key, label) in out {
            self.keys.push(key);
            self.labels.push(label);
        }
        span
    }

    /// Appends a copy of another table's span, its labels passed through
    /// `relabel` (an order-preserving renumbering, so the copy is what
    /// compiling the renumbered rules would give).
    fn copy(&mut self, from: &Self, span: Span, relabel: &mut impl FnMut(u32) -> u32) -> Span {
        let (off, len) = (span.off as usize, span.len as usize);
        let at = Span {
            off: u32::try_from(self.keys.len()).unwrap_or(u32::MAX),
            len: span.len,
        };
        if let (Some(keys), Some(labels)) = (
            from.keys.get(off..off + len),
            from.labels.get(off..off + len),
        ) {
            self.keys.extend_from_slice(keys);
            self.labels.extend(
                labels
                    .iter()
                    .map(|&l| if l == NO_RULE { l } else { relabel(l) }),
            );
        }
        at
    }

    /// Ranges some rule covers within a span (gaps not counted).
    fn covered(&self, span: Span) -> usize {
        let (off, len) = (span.off as usize, span.len as usize);
        self.labels
            .get(off..off + len)
            .map_or(0, |l| l.iter().filter(|&&r| r != NO_RULE).count())
    }

    fn shrink(&mut self) {
        self.keys.shrink_to_fit();
        self.labels.shrink_to_fit();
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

/// The ranges of every IP matcher of a snapshot.
#[derive(Debug, Default)]
pub(crate) struct IpTables {
    v4: Table<u32>,
    v6: Table<u128>,
}

impl IpTables {
    /// Compiles `(network, rule id)` pairs into a new matcher.
    pub(crate) fn add(&mut self, rules: impl IntoIterator<Item = (IpNet, u32)>) -> Spans {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (net, rule) in rules {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()), rule)),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()), rule)),
            }
        }
        Spans {
            v4: self.v4.push(v4, |a| a.checked_add(1)),
            v6: self.v6.push(v6, |a| a.checked_add(1)),
        }
    }

    /// The lowest rule id of the matcher at `spans` whose network contains
    /// `addr`. IPv4-mapped IPv6 addresses are looked up as IPv4 (SPEC §1.4).
    #[inline]
    pub(crate) fn lookup(&self, spans: Spans, addr: IpAddr) -> Option<u32> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(spans.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => self.v4.lookup(spans.v4, u32::from(v4)),
                None => self.v6.lookup(spans.v6, u128::from(a)),
            },
        }
    }

    /// Address ranges some rule covers, for statistics: what the rules
    /// became after merging adjacent and nested blocks.
    pub(crate) fn covered(&self, spans: Spans) -> usize {
        self.v4.covered(spans.v4) + self.v6.covered(spans.v6)
    }

    /// Appends a copy of the matcher at `spans` in `from`, its rule ids
    /// passed through `relabel` (which must keep their order).
    pub(crate) fn copy(
        &mut self,
        from: &IpTables,
        spans: Spans,
        mut relabel: impl FnMut(u32) -> u32,
    ) -> Spans {
        Spans {
            v4: self.v4.copy(&from.v4, spans.v4, &mut relabel),
            v6: self.v6.copy(&from.v6, spans.v6, &mut relabel),
        }
    }

    /// Empty tables with room for as many ranges as `like` holds.
    pub(crate) fn with_capacity_of(like: &IpTables) -> Self {
        Self {
            v4: Table::with_capacity(like.v4.keys.len()),
            v6: Table::with_capacity(like.v6.keys.len()),
        }
    }

    /// Releases the spare capacity left by building.
    pub(crate) fn shrink(&mut self) {
        self.v4.shrink();
        self.v6.shrink();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rules: &[&str]) -> (IpTables, Spans) {
        let mut t = IpTables::default();
        // A matcher before and after, so spans must not leak into each other.
        t.add([
            ("0.0.0.0/0".parse().unwrap(), 99),
            ("::/0".parse().unwrap(), 99),
        ]);
        let s = t.add(
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| (r.parse().unwrap(), i as u32)),
        );
        t.add([
            ("0.0.0.0/0".parse().unwrap(), 98),
            ("::/0".parse().unwrap(), 98),
        ]);
        (t, s)
    }

    fn at(m: &(IpTables, Spans), a: &str) -> Option<u32> {
        m.0.lookup(m.1, a.parse().unwrap())
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
        assert_eq!(m.0.covered(m.1), 2);
    }

    #[test]
    fn empty_matcher_matches_nothing() {
        let m = m(&[]);
        assert_eq!(at(&m, "1.2.3.4"), None);
        assert_eq!(at(&m, "::1"), None);
        assert_eq!(
            m.1,
            Spans {
                v4: Span { off: 1, len: 0 },
                v6: Span { off: 1, len: 0 }
            }
        );
    }
}
