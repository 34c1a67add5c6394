//! A pod's response head written for the client straight from the bytes it came in, with no
//! header map built: the same bytes the client got when the head went through an
//! `http::HeaderMap` (the pod's fields appended in order, a `Content-Length` beside a
//! `Transfer-Encoding` left out, the hop-by-hop fields and those a `Connection` field lists
//! removed, the proxy's own fields inserted or removed) and was written by [`super::reply`]'s
//! rules.
//!
//! A header map keeps one entry per name, in the order names first came, a name's values
//! together; removing a name moves the last entry into its place, and inserting one replaces
//! its values where it stands or adds it at the end. [`relayed_head`] keeps the entries the same
//! way (a few indexes on the stack), so the field order is the one the map gave.

use std::iter::successors;

use smallvec::SmallVec;

use super::head::{lists_a_field, tokens, Known};
use super::reply::{self, Asked, BodyLength, FieldKind, Framing, Line, Status};
use super::response::{ResponseField, ResponseHead};

/// A change the proxy makes to a response's fields, as `http::HeaderMap::insert` (with a value)
/// or `remove` (without) makes it.
#[derive(Clone, Copy, Debug)]
pub struct Change<'a> {
    /// The field's name, lowercase.
    pub name: &'a [u8],
    /// Its one value; `None`: the field is removed.
    pub value: Option<&'a [u8]>,
}

/// The hop-by-hop fields, in the order a header map's strip removes them.
const HOP_BY_HOP: [Known; 7] = [
    Known::Connection,
    Known::TransferEncoding,
    Known::Te,
    Known::Trailer,
    Known::Upgrade,
    Known::KeepAlive,
    Known::ProxyConnection,
];

/// Writes the head of the pod's response `head` (parsed from `bytes`) for the client, with
/// `changes` made after the hop-by-hop fields are removed, and a body of `length` (see the
/// module's description). Returns how the body is written, and whether the connection must
/// close after it.
pub fn relayed_head(
    out: &mut Vec<u8>,
    head: &ResponseHead,
    bytes: &[u8],
    changes: &[Change<'_>],
    length: BodyLength,
    asked: Asked,
) -> (Framing, bool) {
    let mut entries = Entries::of(head, bytes);
    entries.strip_hop_by_hop();
    entries.apply(changes);
    reply::head(
        out,
        status(head, bytes),
        entries.lines(changes),
        length,
        asked,
    )
}

/// The status line of the pod's response: its version, its status, and its reason phrase when
/// it is not the canonical one (and is one hyper would write).
pub fn status<'b>(head: &ResponseHead, bytes: &'b [u8]) -> Status<'b> {
    let reason = head.reason(bytes);
    let custom = !reason.is_empty()
        && reply::canonical_reason(head.status()).map(str::as_bytes) != Some(reason)
        && reason
            .iter()
            .all(|b| matches!(b, b'\t' | b' '..=b'~' | 0x80..));
    Status {
        http10: head.is_http10(),
        code: head.status(),
        custom_reason: custom.then_some(reason),
    }
}

/// No next value.
const NONE: u8 = u8::MAX;

/// One name of a header map: the pod's (its first and last field), or a change's.
#[derive(Clone, Copy, Debug)]
enum Entry {
    Pod { first: u8, last: u8 },
    Changed(u8),
}

/// The entries of the header map the pod's head would make, in the map's order.
struct Entries<'h> {
    fields: &'h [ResponseField],
    bytes: &'h [u8],
    entries: SmallVec<[Entry; 16]>,
    /// For each field, the next field of the same name.
    next: SmallVec<[u8; 16]>,
    /// A bit for each name ever entered ([`name_bit`]): a name whose bit is clear is not
    /// there, found without comparing names.
    names: u64,
    /// A bit for each kind of known field entered.
    known: u16,
}

/// A name's bit among 64, from its length and its last letter (ASCII case-insensitive). The
/// names the router sets and the fields pods commonly send fall on different bits.
#[inline]
fn name_bit(name: &[u8]) -> u64 {
    let last = name.last().map_or(0, |b| b | 0x20);
    1 << ((name.len() * 3 + usize::from(last)) & 63)
}

/// What a pod's field is to `reply`'s rules (its kind was found when the head was parsed; only
/// `Date` is looked for here).
fn kind_of(field: &ResponseField, name: &[u8]) -> FieldKind {
    match field.known() {
        Some(Known::ContentLength) => FieldKind::ContentLength,
        Some(Known::TransferEncoding) => FieldKind::TransferEncoding,
        Some(Known::Connection) => FieldKind::Connection,
        Some(_) => FieldKind::Other,
        None if name.len() == 4 && name.eq_ignore_ascii_case(b"date") => FieldKind::Date,
        None => FieldKind::Other,
    }
}

/// The bit of a kind of known field.
fn known_bit(known: Known) -> u16 {
    1 << known as u16
}

impl<'h> Entries<'h> {
    /// The pod's fields appended in order; a `Content-Length` is left out when the head has a
    /// `Transfer-Encoding` (the body is re-framed for the client, RFC 9112 §6.3).
    fn of(head: &'h ResponseHead, bytes: &'h [u8]) -> Self {
        let fields = head.fields();
        let encoded = fields
            .iter()
            .any(|f| f.known() == Some(Known::TransferEncoding));
        let mut map = Entries {
            fields,
            bytes,
            entries: SmallVec::new(),
            next: SmallVec::from_elem(NONE, fields.len()),
            names: 0,
            known: 0,
        };
        for (i, field) in fields.iter().enumerate() {
            if encoded && field.known() == Some(Known::ContentLength) {
                continue;
            }
            let (i, name) = (i as u8, field.name(bytes));
            match map.position(name, &[]) {
                Some(at) => {
                    if let Entry::Pod { last, .. } = &mut map.entries[at] {
                        map.next[*last as usize] = i;
                        *last = i;
                    }
                }
                None => {
                    map.entries.push(Entry::Pod { first: i, last: i });
                    map.names |= name_bit(name);
                    map.known |= field.known().map_or(0, known_bit);
                }
            }
        }
        map
    }

    /// The fields of one name, from `first` on.
    fn chain(&self, first: Option<u8>) -> impl Iterator<Item = u8> + '_ {
        successors(first, |&i| {
            let next = self.next[i as usize];
            (next != NONE).then_some(next)
        })
    }

    /// Where the entry named `name` is.
    #[inline]
    fn position(&self, name: &[u8], changes: &[Change<'_>]) -> Option<usize> {
        if self.names & name_bit(name) == 0 {
            return None;
        }
        self.search(name, changes)
    }

    /// Where the entry named `name` is, compared with each.
    #[inline(never)]
    fn search(&self, name: &[u8], changes: &[Change<'_>]) -> Option<usize> {
        self.entries.iter().position(|entry| {
            let named = match *entry {
                Entry::Pod { first, .. } => self.fields[first as usize].name(self.bytes),
                Entry::Changed(i) => changes[i as usize].name,
            };
            named.eq_ignore_ascii_case(name)
        })
    }

    /// Where the entry of the known field `known` is.
    fn position_of(&self, known: Known) -> Option<usize> {
        if self.known & known_bit(known) == 0 {
            return None;
        }
        self.entries.iter().position(|entry| {
            matches!(*entry, Entry::Pod { first, .. }
                if self.fields[first as usize].known() == Some(known))
        })
    }

    /// Removes the names the `Connection` fields list (but `close` and the hop-by-hop names),
    /// in the order they are listed, then the hop-by-hop fields.
    fn strip_hop_by_hop(&mut self) {
        let (fields, bytes) = (self.fields, self.bytes);
        if let Some(at) = self.position_of(Known::Connection) {
            let Entry::Pod { first, .. } = self.entries[at] else {
                return;
            };
            let values = self
                .chain(Some(first))
                .map(|i| fields[i as usize].value(bytes));
            let listed: SmallVec<[&[u8]; 4]> = values
                .flat_map(tokens)
                .filter(|token| !token.eq_ignore_ascii_case(b"close") && lists_a_field(token))
                .collect();
            for name in listed {
                if let Some(at) = self.position(name, &[]) {
                    self.entries.swap_remove(at);
                }
            }
        }
        for known in HOP_BY_HOP {
            if let Some(at) = self.position_of(known) {
                self.entries.swap_remove(at);
            }
        }
    }

    /// Makes `changes`, in order: a value replaces the entry's where it stands, or is added at
    /// the end; no value removes the entry.
    fn apply(&mut self, changes: &[Change<'_>]) {
        for (i, change) in changes.iter().enumerate() {
            let at = self.position(change.name, changes);
            match (at, change.value) {
                (Some(at), Some(_)) => self.entries[at] = Entry::Changed(i as u8),
                (None, Some(_)) => {
                    self.entries.push(Entry::Changed(i as u8));
                    self.names |= name_bit(change.name);
                }
                (Some(at), None) => {
                    self.entries.swap_remove(at);
                }
                (None, None) => {}
            }
        }
    }

    /// The field lines in the map's order.
    fn lines<'a>(&'a self, changes: &'a [Change<'a>]) -> Lines<'a> {
        Lines {
            map: self,
            changes,
            entry: 0,
            field: NONE,
            first: false,
        }
    }
}

/// The field lines of [`Entries`], in the map's order: each entry's values, one after the other.
struct Lines<'a> {
    map: &'a Entries<'a>,
    changes: &'a [Change<'a>],
    /// The next entry.
    entry: usize,
    /// The next field of the current entry ([`NONE`]: the entry is done).
    field: u8,
    /// Whether that field is the entry's first.
    first: bool,
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        loop {
            if self.field != NONE {
                let (map, i) = (self.map, self.field as usize);
                let field = &map.fields[i];
                let name = field.name(map.bytes);
                let line = Line {
                    name,
                    value: field.value(map.bytes),
                    kind: kind_of(field, name),
                    first: self.first,
                };
                (self.field, self.first) = (map.next[i], false);
                return Some(line);
            }
            let entry = *self.map.entries.get(self.entry)?;
            self.entry += 1;
            match entry {
                Entry::Pod { first, .. } => (self.field, self.first) = (first, true),
                Entry::Changed(i) => {
                    let change = &self.changes[i as usize];
                    if let Some(value) = change.value {
                        return Some(Line {
                            name: change.name,
                            value,
                            kind: FieldKind::of(change.name),
                            first: true,
                        });
                    }
                }
            }
        }
    }
}
