//! The `text` model: yrs text with formatting attributes.

use std::collections::BTreeMap;
use std::sync::Arc;

use yrs::types::Attrs;
use yrs::types::text::YChange;
use yrs::{GetString as _, Text as _, TextRef, Transaction, TransactionMut, WriteTxn as _};

use crate::model::convert::{any_to_value, out_to_value};
use crate::model::{Model, ModelError};
use crate::value::Value;

/// Name of the root text.
const ROOT: &str = "text";

/// The `text` model: a string with formatting spans; concurrent inserts at one position
/// interleave the same way on every replica.
///
/// Its value is a map: `"text"` holds the plain string, `"spans"` a list of `{"insert": string,
/// "attributes": map}` runs, one per stretch of equal formatting. Positions count UTF-8 bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextModel;

/// A local operation on a `text` object.
#[derive(Debug, Clone, PartialEq)]
pub enum TextOp {
    /// Inserts `text` at byte position `index`, with formatting `attributes` (may be empty).
    Insert {
        /// Byte position.
        index: u32,
        /// What to insert.
        text: String,
        /// Formatting of the inserted text, e.g. `{"bold": true}`.
        attributes: BTreeMap<String, Value>,
    },
    /// Removes `len` bytes from `index`.
    Remove {
        /// Byte position.
        index: u32,
        /// Byte count.
        len: u32,
    },
    /// Sets formatting on `len` bytes from `index`; an attribute set to null clears it.
    Format {
        /// Byte position.
        index: u32,
        /// Byte count.
        len: u32,
        /// The attributes.
        attributes: BTreeMap<String, Value>,
    },
}

fn attrs(attributes: &BTreeMap<String, Value>) -> Attrs {
    attributes
        .iter()
        .map(|(k, v)| {
            let any = match crate::model::convert::value_to_in(v) {
                yrs::In::Any(any) => any,
                _ => yrs::Any::Null,
            };
            (Arc::from(k.as_str()), any)
        })
        .collect()
}

fn check_range(text: &str, index: u32, len: u32) -> Result<(), ModelError> {
    let end = index.saturating_add(len);
    let have = u32::try_from(text.len()).unwrap_or(u32::MAX);
    if end > have {
        return Err(ModelError::OutOfRange {
            path: ROOT.to_owned(),
            index,
            end,
            len: have,
        });
    }
    for at in [index, end] {
        let at_usize = usize::try_from(at).unwrap_or(usize::MAX);
        if !text.is_char_boundary(at_usize) {
            return Err(ModelError::NotCharBoundary { index: at });
        }
    }
    Ok(())
}

fn root(txn: &mut TransactionMut<'_>) -> TextRef {
    txn.get_or_insert_text(ROOT)
}

impl Model for TextModel {
    const KIND: &'static str = "text";
    type Op = TextOp;

    fn apply_op(txn: &mut TransactionMut<'_>, op: &TextOp) -> Result<(), ModelError> {
        let text = root(txn);
        let current = text.get_string(txn);
        match op {
            TextOp::Insert {
                index,
                text: chunk,
                attributes,
            } => {
                check_range(&current, *index, 0)?;
                if attributes.is_empty() {
                    text.insert(txn, *index, chunk);
                } else {
                    text.insert_with_attributes(txn, *index, chunk, attrs(attributes));
                }
            }
            TextOp::Remove { index, len } => {
                check_range(&current, *index, *len)?;
                text.remove_range(txn, *index, *len);
            }
            TextOp::Format {
                index,
                len,
                attributes,
            } => {
                check_range(&current, *index, *len)?;
                text.format(txn, *index, *len, attrs(attributes));
            }
        }
        Ok(())
    }

    fn materialize(txn: &Transaction<'_>) -> Value {
        use yrs::ReadTxn as _;
        let Some(text) = txn.get_text(ROOT) else {
            return Value::Map(
                [
                    ("text".to_owned(), Value::String(String::new())),
                    ("spans".to_owned(), Value::List(Vec::new())),
                ]
                .into_iter()
                .collect(),
            );
        };
        let plain = text.get_string(txn);
        // yrs splits runs at block boundaries, which depend on delivery order; merging runs of
        // equal formatting gives every replica the same spans.
        let mut runs: Vec<(Value, BTreeMap<String, Value>)> = Vec::new();
        for diff in text.diff(txn, YChange::identity) {
            let attributes: BTreeMap<String, Value> = diff
                .attributes
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.to_string(), any_to_value(v)))
                        .collect()
                })
                .unwrap_or_default();
            let insert = out_to_value(txn, &diff.insert);
            if let Some((Value::String(last), last_attrs)) = runs.last_mut()
                && let Value::String(more) = &insert
                && *last_attrs == attributes
            {
                last.push_str(more);
                continue;
            }
            runs.push((insert, attributes));
        }
        let spans = runs
            .into_iter()
            .map(|(insert, attributes)| {
                Value::Map(
                    [
                        ("insert".to_owned(), insert),
                        ("attributes".to_owned(), Value::Map(attributes)),
                    ]
                    .into_iter()
                    .collect(),
                )
            })
            .collect();
        Value::Map(
            [
                ("text".to_owned(), Value::String(plain)),
                ("spans".to_owned(), Value::List(spans)),
            ]
            .into_iter()
            .collect(),
        )
    }
}
