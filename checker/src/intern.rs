//! Interning of values to dense ids, so the checkers hash and compare `u32`s
//! instead of trees (and so floats inside values need no `Eq`).

use std::collections::HashMap;

use crate::linear::FxBuild;
use crate::Value;

/// Id 0 is always nil; other values get 1, 2, ... in first-seen order.
/// Identity is the EDN text, which is canonical for the values histories
/// carry (maps and sets compare by source order, which Jepsen keeps stable).
#[derive(Default)]
pub(crate) struct Interner {
    /// Integers are by far the most common elements; keying them directly
    /// avoids rendering each one to text.
    ints: HashMap<i64, u32, FxBuild>,
    ids: HashMap<String, u32, FxBuild>,
    values: Vec<Value>,
}

pub(crate) const NIL_ID: u32 = 0;

impl Interner {
    pub fn id(&mut self, v: &Value) -> u32 {
        let key = match v {
            Value::Nil => return NIL_ID,
            Value::Int(i) => {
                if let Some(&id) = self.ints.get(i) {
                    return id;
                }
                self.values.push(v.clone());
                let id = self.values.len() as u32;
                self.ints.insert(*i, id);
                return id;
            }
            other => other.to_edn(),
        };
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        self.values.push(v.clone());
        let id = self.values.len() as u32;
        self.ids.insert(key, id);
        id
    }

    pub fn value(&self, id: u32) -> Value {
        match id {
            NIL_ID => Value::Nil,
            id => self
                .values
                .get(id as usize - 1)
                .cloned()
                .unwrap_or(Value::Nil),
        }
    }

    pub fn len(&self) -> usize {
        self.values.len() + 1
    }

    pub fn edn(&self, id: u32) -> String {
        self.value(id).to_edn()
    }
}
