//! The model catalogue: models, their prices in credits, and their routes.

mod load;
mod model;

pub use load::{CatalogError, CatalogSource};
pub use model::{Model, ModelType, PriceList, RouteSpec};

use foldhash::HashMap;
use std::sync::Arc;

/// Every servable model, looked up by id or alias, case-insensitively.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    models: Vec<Arc<Model>>,
    by_name: HashMap<String, usize>,
}

impl Catalog {
    /// Builds the catalogue; later sources override earlier models with the same id.
    pub fn from_models(models: Vec<Model>) -> Result<Self, CatalogError> {
        let mut out = Self::default();
        let mut order: Vec<Model> = Vec::new();
        for m in models {
            match order.iter().position(|o| o.id.eq_ignore_ascii_case(&m.id)) {
                Some(i) => order[i] = m,
                None => order.push(m),
            }
        }
        for (i, m) in order.into_iter().enumerate() {
            for name in std::iter::once(&m.id).chain(&m.aliases) {
                if let Some(prev) = out.by_name.insert(name.to_ascii_lowercase(), i) {
                    if prev != i {
                        return Err(CatalogError::DuplicateName(name.clone()));
                    }
                }
            }
            out.models.push(Arc::new(m));
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        let key = name.to_ascii_lowercase();
        self.by_name.get(&key).map(|i| &self.models[*i])
    }

    pub fn models(&self) -> &[Arc<Model>] {
        &self.models
    }
}
