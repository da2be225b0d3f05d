//! The snapshot's JSON read straight into typed records, one entry at a
//! time, with nothing decided yet.
//!
//! serde's derived readers stop at the first problem, and a whole
//! `serde_json::Value` tree of a large snapshot costs ten times its size in
//! small allocations. These records sit in between: every field the SPEC
//! knows is read into a slot that keeps whatever JSON kind was found
//! (strings borrowed from the document when they need no unescaping), and
//! every unknown field is remembered by name and position, its value
//! skipped. The checks in `super::check` then judge a record as a whole and
//! report every problem with its path.
//!
//! A key an object names twice is noted too (its second value skipped), and
//! the checks refuse the object with the key's path: either reading of it
//! could open a deployment (`"policies": ["office"], "policies": []`).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The kind of a JSON value, for "expected …, found …".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    pub(super) fn phrase(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool => "a boolean",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Array => "an array",
            Self::Object => "an object",
        }
    }
}

/// A value where the SPEC expects a string, number or boolean. Arrays and
/// objects found there are skipped; only their kind is kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) enum Scalar<'de> {
    /// Absent, or JSON `null` (which the SPEC reads as absent).
    #[default]
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'de, str>),
    Array,
    Object,
}

impl Scalar<'_> {
    pub(super) fn kind(&self) -> Kind {
        match self {
            Self::Null => Kind::Null,
            Self::Bool(_) => Kind::Bool,
            Self::U64(_) | Self::I64(_) | Self::F64(_) => Kind::Number,
            Self::Str(_) => Kind::String,
            Self::Array => Kind::Array,
            Self::Object => Kind::Object,
        }
    }

    pub(super) fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U64(n) => Some(n),
            _ => None,
        }
    }

    pub(super) fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// The value as JSON text (arrays and objects by their kind), for messages
/// such as `-1 is not a PSC connection id`.
impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::U64(n) => write!(f, "{n}"),
            Self::I64(n) => write!(f, "{n}"),
            // serde_json's own rendering (`1.5`, `1e300`), as the
            // messages showed when they were written from a `Value`.
            Self::F64(x) => match serde_json::Number::from_f64(*x) {
                Some(n) => write!(f, "{n}"),
                None => f.write_str("null"),
            },
            Self::Str(s) => match serde_json::to_string(s) {
                Ok(quoted) => f.write_str(&quoted),
                Err(_) => write!(f, "{s:?}"),
            },
            Self::Array | Self::Object => f.write_str(self.kind().phrase()),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let slot = de::DeserializeSeed::deserialize(Expect(ScalarShape), d)?;
        Ok(slot.and_then(Result::ok).unwrap_or_default())
    }
}

/// Reads any value as a [`Scalar`].
struct ScalarShape;

impl<'de> Shape<'de> for ScalarShape {
    type Out = Scalar<'de>;

    fn read_map<A: MapAccess<'de>>(self, map: A) -> Result<Result<Scalar<'de>, Kind>, A::Error> {
        skip_map(map)?;
        Ok(Ok(Scalar::Object))
    }

    fn read_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Result<Scalar<'de>, Kind>, A::Error> {
        skip_seq(seq)?;
        Ok(Ok(Scalar::Array))
    }

    fn scalar(self, value: Scalar<'de>) -> Result<Scalar<'de>, Kind> {
        Ok(value)
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// An object key, borrowed from the document when it needs no unescaping.
pub(super) struct Key<'de>(pub Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

/// A value where the SPEC expects an array or an object of a known shape:
/// `None` when absent or `null`, else the shape or the kind found instead.
pub(super) type Slot<T> = Option<Result<T, Kind>>;

/// How to read one compound JSON value: an object's fields or an array's
/// elements. Reading the other compound kind skips it and reports its kind.
pub(super) trait Shape<'de>: Sized {
    type Out;

    fn read_map<A: MapAccess<'de>>(self, map: A) -> Result<Result<Self::Out, Kind>, A::Error> {
        skip_map(map)?;
        Ok(Err(Kind::Object))
    }

    fn read_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Result<Self::Out, Kind>, A::Error> {
        skip_seq(seq)?;
        Ok(Err(Kind::Array))
    }

    /// A string, number or boolean where this shape was expected: by
    /// default, the kind found.
    fn scalar(self, value: Scalar<'de>) -> Result<Self::Out, Kind> {
        Err(value.kind())
    }
}

/// Reads one value of shape `S` into a [`Slot`]: any other kind is kept as
/// its kind, `null` as absent.
pub(super) struct Expect<S>(pub S);

impl<'de, S: Shape<'de>> de::DeserializeSeed<'de> for Expect<S> {
    type Value = Slot<S::Out>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<S> Expect<S> {
    fn scalar<'de, E>(self, value: Scalar<'de>) -> Result<Slot<S::Out>, E>
    where
        S: Shape<'de>,
    {
        Ok(Some(self.0.scalar(value)))
    }
}

impl<'de, S: Shape<'de>> Visitor<'de> for Expect<S> {
    type Value = Slot<S::Out>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        self.scalar(Scalar::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        // serde_json hands non-negative integers to `visit_u64`; a `Value`
        // may not, so normalise.
        self.scalar(u64::try_from(v).map_or(Scalar::I64(v), Scalar::U64))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        self.scalar(Scalar::U64(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        self.scalar(Scalar::F64(v))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        self.scalar(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        self.scalar(Scalar::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        self.scalar(Scalar::Str(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.read_seq(seq).map(Some)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.read_map(map).map(Some)
    }
}

/// The shape of a record type `T`, read with no state.
pub(super) struct Of<T>(PhantomData<T>);

/// A [`Slot`] of record type `T`, as an element or field type.
pub(super) struct Shaped<T>(pub Slot<T>);

impl<'de, T> Deserialize<'de> for Shaped<T>
where
    Of<T>: Shape<'de, Out = T>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::DeserializeSeed::deserialize(Expect(Of(PhantomData)), d).map(Shaped)
    }
}

/// An array of `T`.
impl<'de, T: Deserialize<'de>> Shape<'de> for Of<Vec<T>> {
    type Out = Vec<T>;

    fn read_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Result<Vec<T>, Kind>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            out.push(item);
        }
        Ok(Ok(out))
    }
}

/// The keys of one object as read: which known fields were present and
/// where, and the unknown ones in order.
#[derive(Debug, Default)]
pub(super) struct Keys<'de> {
    seen: u32,
    count: u32,
    /// Position of each known field (by its bit), for ordering errors;
    /// saturates at 255 (only an object with more keys than any valid one
    /// has can get there, and its errors are merely listed out of order).
    at: [u8; MAX_KNOWN],
    /// Boxed: records are moved several times while read, and almost
    /// every object has no unknown field.
    unknown: Option<Box<Unknown<'de>>>,
    more_unknown: u32,
    /// Keys named again after their first mention, in the order read (at
    /// most [`MAX_UNKNOWN`]); boxed like `unknown`.
    duplicates: Option<Box<Duplicates<'de>>>,
}

/// Unknown keys with their positions.
type Unknown<'de> = Vec<(u32, Cow<'de, str>)>;

/// Keys named more than once.
type Duplicates<'de> = Vec<Cow<'de, str>>;

/// The most known fields any object has (a policy has 7).
const MAX_KNOWN: usize = 8;

impl<'de> Keys<'de> {
    /// Notes known field `bit` (its index in the object's field list):
    /// `false` when it was named before (a [`Keys::duplicate`]), and its
    /// value is to be skipped.
    fn known(&mut self, bit: usize) -> bool {
        let mask = 1 << bit;
        if self.seen & mask != 0 {
            return false;
        }
        self.seen |= mask;
        if let Some(slot) = self.at.get_mut(bit) {
            *slot = u8::try_from(self.count).unwrap_or(u8::MAX);
        }
        self.count += 1;
        true
    }

    fn unknown(&mut self, key: Cow<'de, str>) {
        // Past the cap the object is refused anyway (it has unknown
        // fields), so duplicates among the rest no longer matter; the cap
        // keeps the duplicate check from going quadratic on a hostile
        // document.
        let unknown = self.unknown.get_or_insert_default();
        if unknown.len() >= MAX_UNKNOWN {
            self.more_unknown += 1;
        } else if unknown.iter().any(|(_, k)| *k == key) {
            self.duplicate(key);
        } else {
            unknown.push((self.count, key));
        }
        self.count += 1;
    }

    fn duplicate(&mut self, key: Cow<'de, str>) {
        let duplicates = self.duplicates.get_or_insert_default();
        if duplicates.len() < MAX_UNKNOWN && !duplicates.contains(&key) {
            duplicates.push(key);
        }
    }

    /// The keys named more than once, each once, in the order their
    /// second mentions were read.
    pub(super) fn duplicates(&self) -> impl Iterator<Item = &str> {
        self.duplicates
            .iter()
            .flat_map(|d| d.iter())
            .map(|k| k.as_ref())
    }

    /// Every key as written: `(Some(bit), name)` for known fields (named
    /// from `fields`), `(None, name)` for unknown ones.
    pub(super) fn in_order<'k>(&'k self, fields: &[&'k str]) -> Vec<(Option<usize>, &'k str)> {
        let mut out: Vec<(u32, Option<usize>, &str)> = fields
            .iter()
            .enumerate()
            .filter(|&(bit, _)| self.seen & (1 << bit) != 0)
            .map(|(bit, &name)| {
                let at = self.at.get(bit).copied().unwrap_or(u8::MAX);
                (u32::from(at), Some(bit), name)
            })
            .chain(
                self.unknown
                    .iter()
                    .flat_map(|u| u.iter())
                    .map(|(at, k)| (*at, None, k.as_ref())),
            )
            .collect();
        out.sort_by_key(|&(at, ..)| at);
        out.into_iter().map(|(_, bit, name)| (bit, name)).collect()
    }

    /// The fields not allowed here, in the order written: every unknown
    /// one, and the known ones whose bit is in `disallowed` (fields of
    /// another rule type).
    pub(super) fn not_allowed<'k>(&'k self, fields: &[&'k str], disallowed: u32) -> Vec<&'k str> {
        if self.seen & disallowed == 0 && self.unknown.is_none() {
            return Vec::new();
        }
        self.in_order(fields)
            .into_iter()
            .filter(|&(bit, _)| bit.is_none_or(|b| disallowed & (1 << b) != 0))
            .map(|(_, name)| name)
            .collect()
    }

    /// Unknown fields past [`MAX_UNKNOWN`], not named one by one.
    pub(super) fn more_unknown(&self) -> u32 {
        self.more_unknown
    }
}

/// Unknown fields of one object that are named in errors.
const MAX_UNKNOWN: usize = 64;

/// An object with a fixed set of fields: each record lists its field
/// names, and gives the slot of each scalar field by its index (`bit`);
/// the others (arrays and objects) it reads itself.
pub(super) trait Fields<'de>: Default {
    const FIELDS: &'static [&'static str];

    fn scalar(&mut self, bit: usize) -> Option<&mut Scalar<'de>>;

    fn compound<A: MapAccess<'de>>(&mut self, _bit: usize, map: &mut A) -> Result<(), A::Error> {
        map.next_value::<IgnoredAny>().map(drop)
    }
}

/// A record read from an object, with the object's keys.
#[derive(Default)]
pub(super) struct Obj<'de, T> {
    pub keys: Keys<'de>,
    pub fields: T,
}

/// Reads an object of fields `T`.
fn read_fields<'de, T: Fields<'de>, A: MapAccess<'de>>(map: A) -> Result<Obj<'de, T>, A::Error> {
    debug_assert!(T::FIELDS.len() <= MAX_KNOWN);
    let mut out = Obj::<T>::default();
    let Obj { keys, fields } = &mut out;
    read_object(map, T::FIELDS, keys, |bit, map| match fields.scalar(bit) {
        Some(slot) => {
            *slot = map.next_value()?;
            Ok(())
        }
        None => fields.compound(bit, map),
    })?;
    Ok(out)
}

/// Reads an object's keys into `keys`, handing the value of each field
/// named in `fields` to `value` by its index there; the values of unknown
/// fields are skipped.
fn read_object<'de, A: MapAccess<'de>>(
    mut map: A,
    fields: &[&str],
    keys: &mut Keys<'de>,
    mut value: impl FnMut(usize, &mut A) -> Result<(), A::Error>,
) -> Result<(), A::Error> {
    while let Some(Key(key)) = map.next_key()? {
        match field_bit(fields, &key) {
            Some(bit) if keys.known(bit) => value(bit, &mut map)?,
            // Named before: the object is refused for it (see `Keys`),
            // whichever value would have been read.
            Some(_) => {
                keys.duplicate(key);
                map.next_value::<IgnoredAny>()?;
            }
            None => {
                keys.unknown(key);
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(())
}

/// The index of `key` in `fields`. Lengths first: most keys differ from
/// most names in length, and comparing the bytes of short strings through
/// `memcmp` showed in profiles.
fn field_bit(fields: &[&str], key: &str) -> Option<usize> {
    fields
        .iter()
        .position(|f| f.len() == key.len() && f.bytes().zip(key.bytes()).all(|(a, b)| a == b))
}

/// Records with fixed fields read from objects.
macro_rules! object_shape {
    ($($t:ident),*) => {$(
        impl<'de> Shape<'de> for Of<Obj<'de, $t<'de>>> {
            type Out = Obj<'de, $t<'de>>;

            fn read_map<A: MapAccess<'de>>(self, map: A) -> Result<Result<Self::Out, Kind>, A::Error> {
                read_fields(map).map(Ok)
            }
        }
    )*};
}

object_shape!(RawPolicy, RawRule, RawDeployment, RawResources, RawResource);

/// A policy as written.
#[derive(Default)]
pub(super) struct RawPolicy<'de> {
    pub id: Scalar<'de>,
    pub ty: Scalar<'de>,
    pub region: Scalar<'de>,
    pub rules: Slot<Vec<Shaped<Obj<'de, RawRule<'de>>>>>,
    pub include_by_default: Scalar<'de>,
    pub name: Scalar<'de>,
    pub description: Scalar<'de>,
}

impl<'de> Fields<'de> for RawPolicy<'de> {
    const FIELDS: &'static [&'static str] = &[
        "id",
        "type",
        "region",
        "rules",
        "include_by_default",
        "name",
        "description",
    ];

    fn scalar(&mut self, bit: usize) -> Option<&mut Scalar<'de>> {
        Some(match bit {
            0 => &mut self.id,
            1 => &mut self.ty,
            2 => &mut self.region,
            3 => return None,
            4 => &mut self.include_by_default,
            5 => &mut self.name,
            _ => &mut self.description,
        })
    }

    fn compound<A: MapAccess<'de>>(&mut self, _: usize, map: &mut A) -> Result<(), A::Error> {
        self.rules = map.next_value::<Shaped<_>>()?.0;
        Ok(())
    }
}

/// A rule as written, with the fields of every rule type: which of them
/// are allowed depends on the policy's `type`, which may come after the
/// rules in the object.
#[derive(Default)]
pub(super) struct RawRule<'de> {
    pub source: Scalar<'de>,
    pub description: Scalar<'de>,
    /// Boxed, like [`Keys::unknown`]: only Azure rules have them.
    pub azure: Option<Box<AzureFields<'de>>>,
}

/// The fields only Azure rules have.
#[derive(Default)]
pub(super) struct AzureFields<'de> {
    pub link_id: Scalar<'de>,
    pub azure_endpoint_name: Scalar<'de>,
    pub azure_endpoint_guid: Scalar<'de>,
}

impl RawRule<'_> {
    /// Bits of [`Fields::FIELDS`] allowed in `{source, description}` rules.
    pub(super) const SOURCE_RULE: u32 = 0b10001;
    /// Bits allowed in Azure rules.
    pub(super) const AZURE_RULE: u32 = 0b11110;
}

impl<'de> Fields<'de> for RawRule<'de> {
    const FIELDS: &'static [&'static str] = &[
        "source",
        "link_id",
        "azure_endpoint_name",
        "azure_endpoint_guid",
        "description",
    ];

    fn scalar(&mut self, bit: usize) -> Option<&mut Scalar<'de>> {
        match bit {
            0 => Some(&mut self.source),
            4 => Some(&mut self.description),
            _ => {
                let azure = self.azure.get_or_insert_default();
                let fields = [
                    &mut azure.link_id,
                    &mut azure.azure_endpoint_name,
                    &mut azure.azure_endpoint_guid,
                ];
                fields.into_iter().nth(bit.wrapping_sub(1))
            }
        }
    }
}

/// A deployment as written.
#[derive(Default)]
pub(super) struct RawDeployment<'de> {
    pub id: Scalar<'de>,
    pub alias: Scalar<'de>,
    pub region: Scalar<'de>,
    pub enforcement: Scalar<'de>,
    pub resources: Slot<Obj<'de, RawResources<'de>>>,
    pub policies: Slot<Vec<Scalar<'de>>>,
}

impl<'de> Fields<'de> for RawDeployment<'de> {
    const FIELDS: &'static [&'static str] = &[
        "id",
        "alias",
        "region",
        "enforcement",
        "resources",
        "policies",
    ];

    fn scalar(&mut self, bit: usize) -> Option<&mut Scalar<'de>> {
        [
            &mut self.id,
            &mut self.alias,
            &mut self.region,
            &mut self.enforcement,
        ]
        .into_iter()
        .nth(bit)
    }

    fn compound<A: MapAccess<'de>>(&mut self, bit: usize, map: &mut A) -> Result<(), A::Error> {
        if bit == 4 {
            self.resources = map.next_value::<Shaped<_>>()?.0;
        } else {
            self.policies = map.next_value::<Shaped<_>>()?.0;
        }
        Ok(())
    }
}

/// A deployment's `resources`, by product (the order of
/// [`Product::ALL`](crate::policy::Product::ALL)); unknown products are
/// among the keys.
#[derive(Default)]
pub(super) struct RawResources<'de> {
    pub by_product: [Slot<Obj<'de, RawResource<'de>>>; RESOURCE_KEYS.len()],
}

/// The `resources` keys, in [`Product::ALL`](crate::policy::Product::ALL)
/// order.
pub(super) const RESOURCE_KEYS: [&str; 6] = ["es", "kb", "apm", "fleet", "ent", "remote_cluster"];

impl<'de> Fields<'de> for RawResources<'de> {
    const FIELDS: &'static [&'static str] = &RESOURCE_KEYS;

    fn scalar(&mut self, _: usize) -> Option<&mut Scalar<'de>> {
        None
    }

    fn compound<A: MapAccess<'de>>(&mut self, bit: usize, map: &mut A) -> Result<(), A::Error> {
        let value = map.next_value::<Shaped<_>>()?.0;
        if let Some(slot) = self.by_product.get_mut(bit) {
            *slot = value;
        }
        Ok(())
    }
}

/// One resource as written.
#[derive(Default)]
pub(super) struct RawResource<'de> {
    pub backends: Slot<Vec<Scalar<'de>>>,
}

impl<'de> Fields<'de> for RawResource<'de> {
    const FIELDS: &'static [&'static str] = &["backends"];

    fn scalar(&mut self, _: usize) -> Option<&mut Scalar<'de>> {
        None
    }

    fn compound<A: MapAccess<'de>>(&mut self, _: usize, map: &mut A) -> Result<(), A::Error> {
        self.backends = map.next_value::<Shaped<_>>()?.0;
        Ok(())
    }
}

/// The top of a snapshot document, with each entry handed to a sink as
/// soon as it is read instead of collected: a large snapshot is never held
/// whole in any form but its bytes and the validated model.
pub(super) trait EntrySink<'de> {
    fn policy(&mut self, entry: Slot<Obj<'de, RawPolicy<'de>>>);
    fn deployment(&mut self, entry: Slot<Obj<'de, RawDeployment<'de>>>);
}

/// What the top of the document holds besides its entries.
#[derive(Default)]
pub(super) struct RawDocument<'de> {
    pub keys: Keys<'de>,
    pub version: Scalar<'de>,
    /// Whether each list was present (and its kind when not an array).
    pub policies: Slot<()>,
    pub deployments: Slot<()>,
}

/// Reads a whole document, streaming its entries into the sink.
pub(super) struct DocumentShape<'s, S>(pub &'s mut S);

impl<'de, S: EntrySink<'de>> Shape<'de> for DocumentShape<'_, S> {
    type Out = RawDocument<'de>;

    fn read_map<A: MapAccess<'de>>(
        self,
        map: A,
    ) -> Result<Result<RawDocument<'de>, Kind>, A::Error> {
        let mut doc = RawDocument::default();
        let RawDocument {
            keys,
            version,
            policies,
            deployments,
        } = &mut doc;
        let sink = self.0;
        read_object(map, DOCUMENT_FIELDS, keys, |bit, map| {
            match bit {
                0 => *version = map.next_value()?,
                1 => {
                    *deployments = map.next_value_seed(Expect(Entries(&mut *sink, Deployments)))?
                }
                _ => *policies = map.next_value_seed(Expect(Entries(&mut *sink, Policies)))?,
            }
            Ok(())
        })?;
        Ok(Ok(doc))
    }
}

/// The field names of [`RawDocument`], by bit.
pub(super) const DOCUMENT_FIELDS: &[&str] = &["version", "deployments", "policies"];

/// Which entry list [`Entries`] reads: its records, and how the sink takes
/// one.
trait EntryList<'de> {
    type Record;

    fn hand<S: EntrySink<'de>>(sink: &mut S, entry: Slot<Self::Record>);
}

struct Policies;
struct Deployments;

impl<'de> EntryList<'de> for Policies {
    type Record = Obj<'de, RawPolicy<'de>>;

    fn hand<S: EntrySink<'de>>(sink: &mut S, entry: Slot<Self::Record>) {
        sink.policy(entry);
    }
}

impl<'de> EntryList<'de> for Deployments {
    type Record = Obj<'de, RawDeployment<'de>>;

    fn hand<S: EntrySink<'de>>(sink: &mut S, entry: Slot<Self::Record>) {
        sink.deployment(entry);
    }
}

/// One entry list, each entry handed to the sink as it is read.
struct Entries<'s, S, L>(&'s mut S, L);

impl<'de, S: EntrySink<'de>, L: EntryList<'de>> Shape<'de> for Entries<'_, S, L>
where
    Shaped<L::Record>: Deserialize<'de>,
{
    type Out = ();

    fn read_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Result<(), Kind>, A::Error> {
        while let Some(Shaped(entry)) = seq.next_element()? {
            L::hand(self.0, entry);
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Product;

    #[test]
    fn resource_keys_follow_the_products() {
        let names: Vec<&str> = Product::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, RESOURCE_KEYS);
    }

    fn policy(json: &str) -> Result<Shaped<Obj<'_, RawPolicy<'_>>>, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_duplicate_key_is_noted_and_its_second_value_skipped() {
        let Ok(Shaped(Some(Ok(p)))) = policy(
            "{\"id\": \"a\", \"x\": 1, \"id\": \"b\", \"x\": 2, \"id\": \"c\", \"name\": \"n\"}",
        ) else {
            panic!("not read");
        };
        assert_eq!(p.keys.duplicates().collect::<Vec<_>>(), ["id", "x"]);
        assert!(matches!(p.fields.id, Scalar::Str(ref s) if s == "a"));
        assert!(matches!(p.fields.name, Scalar::Str(ref s) if s == "n"));
        let Ok(Shaped(Some(Ok(p)))) = policy("{\"id\": \"a\", \"name\": \"n\"}") else {
            panic!("not read");
        };
        assert_eq!(p.keys.duplicates().count(), 0);
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let Ok(Shaped(Some(Ok(p)))) = policy(r#"{"id": "plain", "name": "esc\"aped"}"#) else {
            panic!("not read");
        };
        assert!(matches!(p.fields.id, Scalar::Str(Cow::Borrowed("plain"))));
        assert!(matches!(p.fields.name, Scalar::Str(Cow::Owned(ref s)) if s == "esc\"aped"));
    }

    #[test]
    fn unknown_fields_are_kept_in_order_up_to_the_cap() {
        let mut json = String::from("{\"id\": \"p\"");
        for i in 0..(MAX_UNKNOWN + 10) {
            json.push_str(&format!(", \"f{i}\": [1, {{\"a\": 1, \"a\": 2}}]"));
        }
        json.push('}');
        let Ok(Shaped(Some(Ok(p)))) = policy(&json) else {
            panic!("not read");
        };
        let named = p.keys.not_allowed(RawPolicy::FIELDS, 0);
        assert_eq!(named.len(), MAX_UNKNOWN);
        assert_eq!(named.first(), Some(&"f0"));
        assert_eq!(p.keys.more_unknown(), 10);
    }

    #[test]
    fn other_kinds_are_kept_as_their_kind() {
        let Ok(Shaped(Some(Ok(p)))) = policy(r#"{"rules": {"a": 1}, "id": [1], "type": null}"#)
        else {
            panic!("not read");
        };
        assert!(matches!(p.fields.rules, Some(Err(Kind::Object))));
        assert_eq!(p.fields.id.kind(), Kind::Array);
        assert!(p.fields.ty.is_null());
        let Ok(Shaped(not_an_object)) = policy("5") else {
            panic!("not read");
        };
        assert!(matches!(not_an_object, Some(Err(Kind::Number))));
    }
}
