//! PROXY v1: the text line `PROXY TCP4|TCP6|UNKNOWN ... \r\n`.
//!
//! Guarantees: pure, allocation-free and panic-free. The line is judged only
//! once its CRLF is in (as the spec requires) and never looked for past
//! [`V1_MAX_LEN`] bytes. Parsing is strict (single spaces, the address family
//! the protocol names, decimal ports without sign or leading zeros, no line
//! ending but CRLF): whatever deviates is rejected rather than guessed at.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use super::header::{
    Addresses, Command, ParseError, Parsed, ProxyHeader, V1_MAX_LEN, V1_SIGNATURE, Version,
};

/// Parses a buffer that starts with `PROXY `.
pub(super) fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    const INCOMPLETE: Parsed = Parsed::Incomplete {
        total: None,
        max_total: V1_MAX_LEN,
    };
    // Nothing past the longest legal line can be part of the header.
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ParseError::V1TooLong)
        } else {
            Ok(INCOMPLETE)
        };
    };
    let (line, terminator) = window.split_at_checked(end).unwrap_or((window, &[]));
    match terminator {
        [b'\r', b'\n', ..] => {}
        // The LF may still come, unless it would land past the limit (the
        // window was cut at `V1_MAX_LEN`, so `[b'\r']` can also mean that).
        [b'\r'] if end + 2 <= V1_MAX_LEN => return Ok(INCOMPLETE),
        [b'\r'] => return Err(ParseError::V1TooLong),
        // The spec forbids ending the line with a lone CR or LF.
        _ => return Err(ParseError::V1Malformed("line must end with CRLF")),
    }
    let fields = line
        .strip_prefix(V1_SIGNATURE)
        .ok_or(ParseError::V1Malformed("missing signature"))?;
    let (source, destination) = parse_v1_fields(fields)?;
    Ok(Parsed::Complete {
        header: ProxyHeader {
            version: Version::V1,
            command: Command::Proxy,
            source,
            destination,
            endpoint: None,
            crc32c_verified: false,
        },
        consumed: end + 2,
    })
}

/// Parses what follows `PROXY ` up to (excluding) the CRLF.
fn parse_v1_fields(fields: &[u8]) -> Result<Addresses, ParseError> {
    if let Some(rest) = fields.strip_prefix(b"UNKNOWN") {
        // "The receiver must ignore anything presented before the CRLF", but
        // the keyword itself must end there (`UNKNOWNX` is not UNKNOWN).
        return if rest.is_empty() || rest.starts_with(b" ") {
            Ok((None, None))
        } else {
            Err(ParseError::V1Malformed("unknown protocol"))
        };
    }
    // Splitting on single spaces turns any doubled, leading or trailing space
    // into an empty field, which then fails the field count or its parse.
    let mut it = fields.split(|&b| b == b' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(ParseError::V1Malformed(
            "expected protocol, 2 addresses, 2 ports",
        ));
    };
    let (src, dst) = match proto {
        b"TCP4" => (
            v1_ip::<Ipv4Addr>(src, "bad source address")?,
            v1_ip::<Ipv4Addr>(dst, "bad destination address")?,
        ),
        b"TCP6" => (
            v1_ip::<Ipv6Addr>(src, "bad source address")?,
            v1_ip::<Ipv6Addr>(dst, "bad destination address")?,
        ),
        _ => return Err(ParseError::V1Malformed("unknown protocol")),
    };
    let sport = v1_port(sport).ok_or(ParseError::V1Malformed("bad source port"))?;
    let dport = v1_port(dport).ok_or(ParseError::V1Malformed("bad destination port"))?;
    Ok((
        Some(SocketAddr::new(src, sport)),
        Some(SocketAddr::new(dst, dport)),
    ))
}

/// An address literal of the family the protocol field announced. std's
/// parsers are strict: no leading zeros in IPv4 octets, no IPv6 zone ids.
fn v1_ip<T: FromStr + Into<IpAddr>>(
    field: &[u8],
    error: &'static str,
) -> Result<IpAddr, ParseError> {
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse::<T>().ok())
        .map(Into::into)
        .ok_or(ParseError::V1Malformed(error))
}

/// A decimal port: digits only, no sign, no leading zeros (the spec forbids
/// them to avoid octal confusion), at most 65535.
fn v1_port(field: &[u8]) -> Option<u16> {
    match field {
        [b'0'] => Some(0),
        [] | [b'0', ..] => None,
        _ if field.len() > 5 => None,
        _ => field
            .iter()
            .try_fold(0u32, |acc, &b| {
                b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
            })
            .and_then(|port| u16::try_from(port).ok()),
    }
}
