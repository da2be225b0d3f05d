//! Reading a whole prefix at one revision, in pages: shared by the
//! follower (its initial read) and `portcullis publish` (what is stored,
//! to write only the difference).
//!
//! Pages, because etcd builds each response whole in its memory and a
//! fleet's prefix can be large; one revision (the first page's) for every
//! page, so the result is one consistent state even while others write.

use etcd_client::{Client, GetOptions, KeyValue};

use super::client::{EtcdError, EtcdSettings, within};

/// The prefix as it was at one revision.
#[derive(Debug)]
pub struct PrefixState {
    /// The revision every page was read at.
    pub revision: i64,
    /// Every key under the prefix, in key order.
    pub kvs: Vec<KeyValue>,
}

/// Reads every key under `settings.prefix`, `settings.page_size` keys per
/// request, each request bounded by `settings.request_timeout`.
pub async fn read_prefix(
    client: &mut Client,
    settings: &EtcdSettings,
) -> Result<PrefixState, EtcdError> {
    let prefix = settings.prefix.as_bytes().to_vec();
    let end = prefix_end(&prefix);
    let limit = settings.request_timeout;
    let mut revision = 0;
    let mut from = prefix;
    let mut kvs = Vec::new();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(i64::from(settings.page_size));
        // Every page at the first page's revision: one consistent state.
        if revision != 0 {
            options = options.with_revision(revision);
        }
        let mut page = within(limit, client.get(from.clone(), Some(options))).await?;
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        let more = page.more();
        let page = page.take_kvs();
        // The next page starts just after the last key read.
        let next = page.last().filter(|_| more).map(|last| {
            let mut key = last.key().to_vec();
            key.push(0);
            key
        });
        kvs.extend(page);
        match next {
            Some(key) => from = key,
            None => break,
        }
    }
    Ok(PrefixState { revision, kvs })
}

/// The end of the key range that holds every key starting with `prefix`
/// (etcd's convention: the prefix with its last byte below 0xff plus one).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"/p/"), b"/p0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
    }
}
