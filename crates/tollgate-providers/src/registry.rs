//! Provider ids to adapters.

use crate::adapter::ChatProvider;
use std::collections::HashMap;
use std::sync::Arc;

/// The enabled providers, by the id catalogue routes name.
#[derive(Clone, Default)]
pub struct Registry {
    chat: HashMap<String, Arc<dyn ChatProvider>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, id: impl Into<String>, provider: Arc<dyn ChatProvider>) {
        self.chat.insert(id.into(), provider);
    }

    pub fn chat(&self, id: &str) -> Option<&Arc<dyn ChatProvider>> {
        self.chat.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.chat.contains_key(id)
    }
}
