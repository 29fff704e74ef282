//! The layout of a flat parameter arena: every parameter's name, element offset and shape.
//!
//! All parameters of a model live back to back in one FP32 buffer (the master arena); the
//! gradient arena and the low-precision model copy use the same layout, so one offset names a
//! parameter in all three and an optimizer or scaler pass is a single launch over everything.

use std::collections::HashMap;

/// One parameter of an arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamEntry {
    /// Its name (e.g. `transformer.h.0.attn.c_attn.weight`).
    pub name: String,
    /// First element in the arena.
    pub offset: usize,
    /// Row-major shape.
    pub shape: Vec<usize>,
}

impl ParamEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The ordered name -> (offset, shape) table of a flat parameter arena.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamLayout {
    entries: Vec<ParamEntry>,
    by_name: HashMap<String, usize>,
    numel: usize,
}

impl ParamLayout {
    /// An empty layout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a parameter after the last one and returns its entry. A name that is already
    /// present is a bug in the model definition and panics.
    pub fn push(&mut self, name: impl Into<String>, shape: &[usize]) -> ParamEntry {
        let name = name.into();
        assert!(
            !self.by_name.contains_key(&name),
            "parameter {name} declared twice"
        );
        let entry = ParamEntry {
            name: name.clone(),
            offset: self.numel,
            shape: shape.to_vec(),
        };
        self.numel += entry.numel();
        self.by_name.insert(name, self.entries.len());
        self.entries.push(entry.clone());
        entry
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// Every parameter in arena order.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// Total number of elements (the length of each arena).
    pub fn numel(&self) -> usize {
        self.numel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_contiguous_and_names_resolve() {
        let mut l = ParamLayout::new();
        let a = l.push("a", &[2, 3]);
        let b = l.push("b", &[4]);
        assert_eq!((a.offset, b.offset, l.numel()), (0, 6, 10));
        assert_eq!(l.get("b"), Some(&b));
        assert!(l.get("c").is_none());
        assert_eq!(l.entries().len(), 2);
    }
}
