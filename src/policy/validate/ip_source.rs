//! The fast path of an `ip` rule's source: a valid IPv4 or IPv6 address
//! or network, written plainly, with its host bits clear.
//!
//! The large snapshot has a million rules, 85 % like `203.0.113.0/24` and
//! 15 % like `2a00:9f59:32cf::/48`. Through the general path (`split_once`,
//! `IpAddr`'s parser, which tries IPv4 and then IPv6, `u8`'s parser, the
//! `ipnet` constructors) they took 712 M instructions of a first load
//! (callgrind), 14 % of its parse and compile; read here byte by byte,
//! 294 M. Anything this path does not accept whole (an embedded IPv4
//! part, an IPv4-mapped network, a leading zero in an IPv4 octet or a
//! prefix length, host bits set, any error) goes to the general path,
//! which also words the errors: what is accepted, and what is said about
//! the rest, does not change.
//!
//! A backend's address (`10.1.2.3:9200`, 390 k of them at the large scale)
//! takes the same kind of path: `SocketAddr`'s parser cost 144 M
//! instructions of the first load.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// `address` or `address/prefix` on the fast path (see the module); `None`
/// sends the source to the general path.
pub(super) fn canonical(s: &[u8]) -> Option<IpNet> {
    match canonical_v4(s) {
        Some(net) => Some(IpNet::V4(net)),
        None => canonical_v6(s).map(IpNet::V6),
    }
}

/// `a.b.c.d` (as `/32`) or `a.b.c.d/n`, each octet 0–255 in one to three
/// digits without a leading zero (the standard parser refuses those), the
/// prefix length 0–32; `None` for anything else, and for a network with
/// host bits set.
fn canonical_v4(s: &[u8]) -> Option<Ipv4Net> {
    let (addr, i) = ipv4(s)?;
    let prefix = prefix_len(s, i, 32)?;
    let net = Ipv4Net::new(addr, prefix).ok()?;
    (net.trunc() == net).then_some(net)
}

/// A backend written `a.b.c.d:port` (octets as in [`canonical_v4`], the
/// port in one to five digits without a leading zero, at most 65535), as
/// `SocketAddr`'s parser reads it; `None` for anything else (IPv6, a
/// leading zero, any error), which the caller hands to that parser.
pub(super) fn backend_v4(s: &[u8]) -> Option<SocketAddr> {
    let (addr, i) = ipv4(s)?;
    if s.get(i) != Some(&b':') {
        return None;
    }
    let (port, digits) = decimal(s, i + 1, 5)?;
    let port = u16::try_from(port).ok()?;
    (i + 1 + digits == s.len()).then_some(SocketAddr::V4(SocketAddrV4::new(addr, port)))
}

/// The IPv4 address at the start of `s`, four octets 0–255 in one to
/// three digits without a leading zero (the standard parser refuses
/// those), and where it ends.
fn ipv4(s: &[u8]) -> Option<(Ipv4Addr, usize)> {
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let (value, digits) = decimal(s, i, 3)?;
        *octet = u8::try_from(value).ok()?;
        i += digits;
    }
    Some((Ipv4Addr::from(octets), i))
}

/// Hex groups of one to four digits separated by `:`, with at most one
/// `::` standing for at least one zero group (as the standard parser
/// reads them), then an optional prefix length 0–128; `None` for anything
/// else (an embedded IPv4 part included), for host bits set, and for an
/// IPv4-mapped network that the general path turns into an IPv4 one.
fn canonical_v6(s: &[u8]) -> Option<Ipv6Net> {
    let mut head = [0u16; 8];
    let mut tail = [0u16; 8];
    let (mut heads, mut tails) = (0, 0);
    let mut compressed = false;
    let mut i = 0;
    if s.starts_with(b"::") {
        compressed = true;
        i = 2;
    }
    while i < s.len() && s.get(i) != Some(&b'/') {
        let (group, digits) = hex_group(s, i)?;
        i += digits;
        let (groups, count) = if compressed {
            (&mut tail, &mut tails)
        } else {
            (&mut head, &mut heads)
        };
        *groups.get_mut(*count)? = group;
        *count += 1;
        match s.get(i) {
            None | Some(b'/') => break,
            Some(b':') if s.get(i + 1) == Some(&b':') => {
                if compressed {
                    return None;
                }
                compressed = true;
                i += 2;
            }
            Some(b':') => {
                i += 1;
                // A group must follow a single `:`.
                if !s.get(i).is_some_and(u8::is_ascii_hexdigit) {
                    return None;
                }
            }
            Some(_) => return None,
        }
    }
    let groups = if compressed {
        // `::` stands for one zero group at least.
        if heads + tails > 7 {
            return None;
        }
        let mut all = head;
        let at = 8 - tails;
        all.get_mut(at..)?.copy_from_slice(tail.get(..tails)?);
        all
    } else if heads == 8 {
        head
    } else {
        return None;
    };
    let prefix = prefix_len(s, i, 128)?;
    let net = Ipv6Net::new(Ipv6Addr::from(groups), prefix).ok()?;
    let mapped = prefix >= 96 && net.network().to_ipv4_mapped().is_some();
    (net.trunc() == net && !mapped).then_some(net)
}

/// The prefix length at `s[at..]`: 32 or 128 (`max`) when the address
/// ends there, else `/` and one to three digits without a leading zero,
/// at most `max`, ending the source.
fn prefix_len(s: &[u8], at: usize, max: u8) -> Option<u8> {
    match s.get(at) {
        None => Some(max),
        Some(b'/') => {
            let (value, digits) = decimal(s, at + 1, 3)?;
            let prefix = u8::try_from(value).ok().filter(|&p| p <= max)?;
            (at + 1 + digits == s.len()).then_some(prefix)
        }
        Some(_) => None,
    }
}

/// The number of at most `max` decimal digits at `s[at..]` and how many
/// digits it has; `None` when there is no digit, or a leading zero. (Plain
/// loops here and below: the iterator chains they replace cost a third of
/// the fast path's instructions.)
fn decimal(s: &[u8], at: usize, max: usize) -> Option<(u32, usize)> {
    let mut value = 0u32;
    let mut digits = 0;
    while digits < max {
        match s.get(at + digits) {
            Some(&b) if b.is_ascii_digit() => {
                value = value * 10 + u32::from(b - b'0');
                digits += 1;
            }
            _ => break,
        }
    }
    let leading_zero = digits > 1 && s.get(at) == Some(&b'0');
    (digits > 0 && !leading_zero).then_some((value, digits))
}

/// The hex group of one to four digits at `s[at..]` and how many digits
/// it has (leading zeros allowed, as the standard parser allows them).
fn hex_group(s: &[u8], at: usize) -> Option<(u16, usize)> {
    let mut value = 0u16;
    let mut digits = 0;
    while digits < 4 {
        let d = match s.get(at + digits) {
            Some(&b @ b'0'..=b'9') => b - b'0',
            Some(&b @ b'a'..=b'f') => b - b'a' + 10,
            Some(&b @ b'A'..=b'F') => b - b'A' + 10,
            _ => break,
        };
        value = value << 4 | u16::from(d);
        digits += 1;
    }
    (digits > 0).then_some((value, digits))
}

#[cfg(test)]
mod tests {
    use ipnet::IpNet;
    use proptest::prelude::*;

    use std::net::{SocketAddr, SocketAddrV4};

    use super::{backend_v4, canonical};
    use crate::policy::validate::check::parse_ip_source_general;

    fn fast(s: &str) -> Option<IpNet> {
        canonical(s.as_bytes())
    }

    #[test]
    fn the_common_forms_take_the_fast_path() {
        for (s, want) in [
            ("203.0.113.0/24", "203.0.113.0/24"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("255.255.255.255/32", "255.255.255.255/32"),
            ("100.64.0.0/10", "100.64.0.0/10"),
            ("2a00:9f59:32cf::/48", "2a00:9f59:32cf::/48"),
            ("2A00:9F59::/32", "2a00:9f59::/32"),
            (
                "2a00:5250:e2b0:efc1:f947:4a12:31b1:2d2c/128",
                "2a00:5250:e2b0:efc1:f947:4a12:31b1:2d2c/128",
            ),
            ("2001:db8:0:0:0:0:0:1", "2001:db8::1/128"),
            ("0002:0db8::/32", "2:db8::/32"),
            ("::", "::/128"),
            ("::/0", "::/0"),
            ("::1", "::1/128"),
            ("1::", "1::/128"),
            ("1:2:3:4:5:6::8", "1:2:3:4:5:6:0:8/128"),
            ("::fffe:0:0/95", "::fffe:0:0/95"),
        ] {
            assert_eq!(fast(s), Some(want.parse().expect("a network")), "{s}");
        }
    }

    #[test]
    fn everything_else_goes_to_the_general_path() {
        for s in [
            "",
            "1",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.4/",
            "1.2.3.4/33",
            "1.2.3.4/100",
            "256.0.0.0",
            "1.2.3.1000",
            "01.2.3.4",
            "1.2.3.00",
            "1.2.3.4/08",
            "10.0.0.1/8",
            " 1.2.3.4",
            "1.2.3.4 ",
            "1.2.3.4/8/",
            "1..3.4",
            "1.2.3.4x",
            "+1.2.3.4",
            "1.2.3.-4",
            ":",
            ":::",
            ":1",
            "1:",
            "1::2::3",
            "1:2:3:4:5:6:7",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7::8",
            "1:2:3:4:5:6:7:8::",
            "12345::",
            "g::",
            "::ffff:1.2.3.4",
            "::1.2.3.4",
            "::ffff:0:0/96",
            "::ffff:0:0/128",
            "2001:db8::1/64",
            "2001:db8::/129",
            "2001:db8::/032",
            "2001:db8::/",
            "2001:db8:: ",
            "[2001:db8::]",
            "2001:db8::/48x",
        ] {
            assert_eq!(fast(s), None, "{s:?}");
        }
    }

    /// Strings near the IPv4 grammar: octets and prefixes of one to four
    /// digits (leading zeros and values past the range included), a few
    /// wrong separators and stray characters.
    fn near_ipv4() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            (0u32..300).prop_map(|n| n.to_string()),
            (0u32..300).prop_map(|n| format!("0{n}")),
            "[0-9]{1,4}",
        ];
        let sep = prop_oneof![8 => Just("."), 1 => Just(":"), 1 => Just("..")];
        (
            part.clone(),
            sep.clone(),
            part.clone(),
            sep.clone(),
            part.clone(),
            sep,
            part,
            prefix(40),
            tail(),
        )
            .prop_map(|(a, s1, b, s2, c, s3, d, p, t)| format!("{a}{s1}{b}{s2}{c}{s3}{d}{p}{t}"))
    }

    /// Strings near the IPv6 grammar: one to nine groups of zero to five
    /// hex digits (either case), joined by `:` or `::` (any number of
    /// times), sometimes an IPv4 tail or an IPv4-mapped prefix.
    fn near_ipv6() -> impl Strategy<Value = String> {
        let group = prop_oneof![
            4 => "[0-9a-f]{1,4}",
            1 => "[0-9A-F]{1,4}",
            1 => "[0-9a-f]{0,5}",
            1 => Just("ffff".to_owned()),
        ];
        let sep = prop_oneof![6 => Just(":"), 2 => Just("::"), 1 => Just(":::")];
        let start = prop_oneof![6 => Just(""), 2 => Just("::"), 1 => Just(":")];
        let v4 = prop_oneof![6 => Just(String::new()), 1 => Just(":1.2.3.4".to_owned())];
        (
            start,
            prop::collection::vec((group, sep), 0..9),
            "[0-9a-f]{0,4}",
            v4,
            prefix(140),
            tail(),
        )
            .prop_map(|(start, groups, last, v4, p, t)| {
                let body: String = groups.into_iter().map(|(g, s)| g + s).collect();
                format!("{start}{body}{last}{v4}{p}{t}")
            })
    }

    fn prefix(range: u32) -> impl Strategy<Value = String> {
        prop_oneof![
            3 => Just(String::new()),
            4 => (0..range).prop_map(|n| format!("/{n}")),
            1 => "/[0-9]{0,4}",
            1 => "/[0-9a-f]{1,2}",
        ]
    }

    fn tail() -> impl Strategy<Value = &'static str> {
        prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("x"), 1 => Just("/")]
    }

    #[test]
    fn backends_in_ipv4_take_their_fast_path() {
        for (s, want) in [
            ("10.1.2.3:9200", Some("10.1.2.3:9200")),
            ("0.0.0.0:0", Some("0.0.0.0:0")),
            ("255.255.255.255:65535", Some("255.255.255.255:65535")),
            // To the standard parser: it words the refusal, or reads what
            // this path does not.
            ("10.1.2.3:65536", None),
            ("10.1.2.3:09200", None),
            ("10.1.2.3", None),
            ("10.1.2.3:", None),
            ("10.1.2.3:92 ", None),
            ("010.1.2.3:9200", None),
            ("10.1.2:9200", None),
            ("[::1]:9200", None),
            ("10.1.2.3/8:9200", None),
        ] {
            let want = want.map(|w| w.parse::<SocketAddr>().expect("a test address"));
            assert_eq!(backend_v4(s.as_bytes()), want, "{s}");
        }
    }

    /// Strings near `a.b.c.d:port`: the IPv4 grammar's strings, then a
    /// port of zero to six digits (leading zeros and values past 65535
    /// included), sometimes another separator or a stray character.
    fn near_backend() -> impl Strategy<Value = String> {
        let port = prop_oneof![
            4 => (0u32..70_000).prop_map(|n| format!(":{n}")),
            1 => ":[0-9]{0,6}",
            1 => Just("::1".to_owned()),
            1 => Just(String::new()),
        ];
        (near_ipv4(), port, tail()).prop_map(|(a, p, t)| format!("{a}{p}{t}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Whatever the backend fast path accepts, `SocketAddr`'s parser
        /// accepts as the same address.
        #[test]
        fn the_backend_fast_path_agrees_with_the_standard_parser(s in near_backend()) {
            if let Some(addr) = backend_v4(s.as_bytes()) {
                prop_assert_eq!(s.parse::<SocketAddr>(), Ok(addr));
            }
        }

        /// And every IPv4 backend, printed as the standard library prints
        /// it, is read on the fast path.
        #[test]
        fn every_ipv4_backend_takes_the_fast_path(ip in any::<u32>(), port in any::<u16>()) {
            let addr = SocketAddr::V4(SocketAddrV4::new(ip.into(), port));
            prop_assert_eq!(backend_v4(addr.to_string().as_bytes()), Some(addr));
        }

        /// Whatever the fast path accepts, the general one accepts as the
        /// same network.
        #[test]
        fn the_fast_path_agrees_with_the_general_one(
            s in prop_oneof![near_ipv4(), near_ipv6()],
        ) {
            if let Some(net) = fast(&s) {
                prop_assert_eq!(parse_ip_source_general(&s), Ok(net));
            }
        }

        /// And every valid network the general path keeps as written
        /// (host bits clear; not IPv4-mapped), printed canonically, fully
        /// or as a bare address, is read on the fast path: the fast path
        /// is the one taken.
        #[test]
        fn every_plainly_written_network_takes_the_fast_path(
            v4 in any::<u32>(),
            v6 in any::<u128>(),
            prefix in 0u8..=128,
            family_v6 in any::<bool>(),
            full in any::<bool>(),
        ) {
            let net = if family_v6 {
                IpNet::V6(ipnet::Ipv6Net::new(v6.into(), prefix).expect("prefix ≤ 128").trunc())
            } else {
                IpNet::V4(ipnet::Ipv4Net::new(v4.into(), prefix % 33).expect("prefix ≤ 32").trunc())
            };
            let s = if !full && net.prefix_len() == net.max_prefix_len() {
                net.addr().to_string()
            } else {
                net.to_string()
            };
            // What the general path reads it as (an IPv4-mapped one as
            // IPv4): the fast path reads it the same, or leaves it alone
            // when the text has an embedded IPv4 part or is mapped.
            let general = parse_ip_source_general(&s).expect("valid");
            match fast(&s) {
                Some(read) => prop_assert_eq!(read, general),
                None => prop_assert!(s.contains('.') && s.contains(':'), "{} was not read on the fast path", s),
            }
        }

        /// Expanded IPv6 text (all eight groups, leading zeros) is read on
        /// the fast path too.
        #[test]
        fn expanded_ipv6_takes_the_fast_path(v6 in any::<u128>(), prefix in 0u8..=128) {
            let net = ipnet::Ipv6Net::new(v6.into(), prefix).expect("prefix ≤ 128").trunc();
            let groups: Vec<String> = net.network().segments().iter().map(|g| format!("{g:04x}")).collect();
            let s = format!("{}/{prefix}", groups.join(":"));
            let general = parse_ip_source_general(&s).expect("valid");
            prop_assert_eq!(fast(&s).unwrap_or(general), general);
            if matches!(general, IpNet::V6(_)) {
                prop_assert_eq!(fast(&s), Some(general));
            }
        }
    }
}
