//! The `counter` model: a custom model built on the public [`Model`] trait alone.

use yrs::{Map as _, Transaction, TransactionMut, WriteTxn as _};

use crate::model::convert::{any_to_value, insert_value};
use crate::model::{Model, ModelError};
use crate::value::Value;

const ROOT: &str = "counter";

/// A counter that merges concurrent increments by adding them (a PN-counter).
///
/// Each writer keeps its own running total under its yrs client id; a writer's own entries are
/// causally ordered, so the last one is its total, and the value is the sum over writers.
#[derive(Debug, Clone, Copy, Default)]
pub struct CounterModel;

/// A local operation on a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterOp {
    /// Adds the amount (negative to subtract).
    Add(i64),
}

fn entry_value(out: &yrs::Out) -> i64 {
    match out {
        yrs::Out::Any(any) => match any_to_value(any) {
            Value::Int(i) => i,
            _ => 0,
        },
        _ => 0,
    }
}

impl Model for CounterModel {
    const KIND: &'static str = "counter";
    type Op = CounterOp;

    fn apply_op(txn: &mut TransactionMut<'_>, op: &CounterOp) -> Result<(), ModelError> {
        let CounterOp::Add(amount) = *op;
        let map = txn.get_or_insert_map(ROOT);
        let key = txn.doc().client_id().get().to_string();
        let mine = map.get(txn, &key).map_or(0, |out| entry_value(&out));
        let total = mine
            .checked_add(amount)
            .ok_or_else(|| ModelError::Invalid {
                reason: format!("adding {amount} to this writer's total {mine} overflows"),
            })?;
        insert_value(txn, &map, &key, &Value::Int(total));
        Ok(())
    }

    fn materialize(txn: &Transaction<'_>) -> Value {
        use yrs::ReadTxn as _;
        let Some(map) = txn.get_map(ROOT) else {
            return Value::Int(0);
        };
        let sum = map
            .iter(txn)
            .fold(0i64, |acc, (_, out)| acc.wrapping_add(entry_value(&out)));
        Value::Int(sum)
    }
}
