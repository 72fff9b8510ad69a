//! Which tables the relay streams and how their rows are routed: the `[[tables]]` configuration.
//!
//! Each entry names a table, its owner column (the column compared with the JWT `sub`; a
//! `uuid`) and the operations streamed. A row change of a table that no entry names, or of an
//! operation its entry does not list, is skipped. The defaults follow the engagement-system
//! migration (seed `story-1-1-engagement-system-migration.md`): new and soft-deleted
//! `engagement_events`, new `engagement_state_transitions`, changed `user_engagement_states`.
//! `engagement_message_queue` is service-only and never streamed.
//!
//! At every connect the catalog check ([`crate::catalog::check`]) reads the configured tables'
//! columns into [`Tables`]: a missing table, a missing or non-`uuid` owner column, or a table
//! the publication does not carry stops the relay with a message naming the `[[tables]]` entry.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::Deserialize;

use crate::model::Operation;
use crate::model::Relation;

/// One `[[tables]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Schema of the table (default `public`).
    #[serde(default = "public")]
    pub schema: String,
    /// Table name.
    pub table: String,
    /// The `uuid` column compared with the JWT `sub` to route a row (default `user_id`).
    #[serde(default = "user_id")]
    pub owner_column: String,
    /// Row changes streamed: `insert`, `update` and/or `delete` (default `["insert"]`). A
    /// delete's owner is read from its old tuple, which pgoutput fills with the replica
    /// identity's columns only: `delete` needs an identity covering the owner column
    /// (`REPLICA IDENTITY FULL`; checked at start-up and by `doctor`).
    #[serde(default = "insert_only")]
    pub operations: Vec<Operation>,
}

fn public() -> String {
    "public".into()
}

fn user_id() -> String {
    "user_id".into()
}

fn insert_only() -> Vec<Operation> {
    vec![Operation::Insert]
}

impl TableConfig {
    fn new(table: &str, operations: &[Operation]) -> TableConfig {
        TableConfig {
            schema: public(),
            table: table.into(),
            owner_column: user_id(),
            operations: operations.to_vec(),
        }
    }

    /// `schema.table`, for messages.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// The default `[[tables]]`: `engagement_events` (insert, update, delete: a soft delete and an
/// erasure reach dashboards; migration `20241213000000_engagement_events_deletes.sql` makes its
/// replica identity full), `engagement_state_transitions` (insert), `user_engagement_states`
/// (update).
pub fn default_tables() -> Vec<TableConfig> {
    use Operation::{Delete, Insert, Update};
    vec![
        TableConfig::new("engagement_events", &[Insert, Update, Delete]),
        TableConfig::new("engagement_state_transitions", &[Insert]),
        TableConfig::new("user_engagement_states", &[Update]),
    ]
}

/// The engagement message queue (seed story 1.1, ADR-003): service-only, never streamed.
pub const SERVICE_ONLY: (&str, &str) = ("public", "engagement_message_queue");

/// A `[[tables]]` entry the configuration refuses; `Display` names the entry's key, e.g.
/// `tables[1].owner_column: must be 1–63 characters …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TablesError {
    /// No entry at all.
    #[error("tables: at least one [[tables]] entry is needed")]
    Empty,
    /// `schema`, `table` or `owner_column` is not a PostgreSQL identifier.
    #[error("tables[{entry}].{key}: must be 1–63 characters (a PostgreSQL identifier)")]
    Name {
        /// Index of the entry.
        entry: usize,
        /// `schema`, `table` or `owner_column`.
        key: &'static str,
    },
    /// `operations` is empty.
    #[error("tables[{entry}].operations: list at least one of \"insert\", \"update\", \"delete\"")]
    NoOperation {
        /// Index of the entry.
        entry: usize,
    },
    /// `operations` lists one twice.
    #[error("tables[{entry}].operations: lists an operation twice")]
    RepeatedOperation {
        /// Index of the entry.
        entry: usize,
    },
    /// The entry names the service-only queue ([`SERVICE_ONLY`]).
    #[error(
        "tables[{entry}]: {table} is service-only (its rows hold delivery addresses) and is \
         never streamed"
    )]
    ServiceOnly {
        /// Index of the entry.
        entry: usize,
        /// `schema.table`.
        table: String,
    },
    /// An earlier entry names the same table.
    #[error("tables[{entry}]: {table} is already configured by tables[{first}]")]
    Repeated {
        /// Index of the entry.
        entry: usize,
        /// `schema.table`.
        table: String,
        /// Index of the earlier entry.
        first: usize,
    },
}

/// Checks the `[[tables]]` entries.
///
/// Errors: the first [`TablesError`].
pub fn validate(tables: &[TableConfig]) -> Result<(), TablesError> {
    if tables.is_empty() {
        return Err(TablesError::Empty);
    }
    for (i, t) in tables.iter().enumerate() {
        for (key, name) in [
            ("schema", &t.schema),
            ("table", &t.table),
            ("owner_column", &t.owner_column),
        ] {
            if name.is_empty() || name.len() > 63 || name.contains('\0') {
                return Err(TablesError::Name { entry: i, key });
            }
        }
        if t.operations.is_empty() {
            return Err(TablesError::NoOperation { entry: i });
        }
        if (1..t.operations.len()).any(|k| t.operations[..k].contains(&t.operations[k])) {
            return Err(TablesError::RepeatedOperation { entry: i });
        }
        if (t.schema.as_str(), t.table.as_str()) == SERVICE_ONLY {
            return Err(TablesError::ServiceOnly {
                entry: i,
                table: t.qualified(),
            });
        }
        if let Some(j) = tables[..i]
            .iter()
            .position(|o| o.schema == t.schema && o.table == t.table)
        {
            return Err(TablesError::Repeated {
                entry: i,
                table: t.qualified(),
                first: j,
            });
        }
    }
    Ok(())
}

/// Streamed tables a session chose (the native `table` parameter, a Supabase binding's schema
/// and table), resolved against `[[tables]]` once, so that matching a row is a comparison of
/// names, not a parse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection(Vec<(String, String)>);

impl Selection {
    /// Whether rows of `relation` are selected.
    pub fn contains(&self, relation: &Relation) -> bool {
        self.0
            .iter()
            .any(|(schema, table)| *schema == relation.schema && *table == relation.name)
    }

    /// True when no table is selected.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The selected `(schema, table)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = &(String, String)> {
        self.0.iter()
    }

    /// Adds the tables of `other` not selected yet.
    pub fn extend(&mut self, other: Selection) {
        for pair in other.0 {
            if !self.0.contains(&pair) {
                self.0.push(pair);
            }
        }
    }
}

/// A column of a streamed table: name and type OID (`pg_attribute.atttypid`).
pub type Column = (String, u32);

/// What the catalog check read of one streamed table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableShape {
    /// Columns in attribute order.
    pub columns: Vec<Column>,
    /// Primary key columns in key order (empty without a primary key).
    pub primary_key: Vec<String>,
}

/// The streamed tables, with their shapes as the catalog last described them.
#[derive(Debug)]
pub struct Tables {
    entries: Vec<TableConfig>,
    /// `schema.table` → its shape; filled by [`Tables::set_shapes`].
    shapes: RwLock<HashMap<(String, String), TableShape>>,
}

impl Tables {
    /// The routing table of a validated configuration.
    pub fn new(entries: &[TableConfig]) -> Tables {
        Tables {
            entries: entries.to_vec(),
            shapes: RwLock::new(HashMap::new()),
        }
    }

    /// The configured entries, in configuration order.
    pub fn entries(&self) -> &[TableConfig] {
        &self.entries
    }

    /// The owner column a change of `relation` is routed by, or `None` when the table or this
    /// operation is not streamed.
    pub fn route(&self, relation: &Relation, operation: Operation) -> Option<&str> {
        self.entries
            .iter()
            .find(|t| t.table == relation.name && t.schema == relation.schema)
            .filter(|t| t.operations.contains(&operation))
            .map(|t| t.owner_column.as_str())
    }

    /// The configured tables `schema`/`table` select, where `*` (or no table) is any: how a
    /// Supabase `postgres_changes` binding names what it wants.
    pub fn matching<'a>(
        &'a self,
        schema: &'a str,
        table: Option<&'a str>,
    ) -> impl Iterator<Item = &'a TableConfig> + 'a {
        self.entries.iter().filter(move |t| {
            (schema == "*" || schema == t.schema) && table.is_none_or(|n| n == "*" || n == t.table)
        })
    }

    /// [`Tables::matching`] as a [`Selection`].
    pub fn select(&self, schema: &str, table: Option<&str>) -> Selection {
        Selection(
            self.matching(schema, table)
                .map(|t| (t.schema.clone(), t.table.clone()))
                .collect(),
        )
    }

    /// The columns of `schema.table` (empty until the catalog check has read them).
    pub fn columns(&self, schema: &str, table: &str) -> Vec<Column> {
        let shapes = self.shapes.read().unwrap_or_else(|e| e.into_inner());
        shapes
            .get(&(schema.to_string(), table.to_string()))
            .map(|shape| shape.columns.clone())
            .unwrap_or_default()
    }

    /// The [`crate::model::Event::row`] key of `record`, a row of `relation`: its primary key
    /// values as the catalog check read the key ([`Tables::set_shapes`]); `None` for a table
    /// without a primary key, or a record without the key's values.
    pub fn row_key(&self, relation: &Relation, record: &crate::model::Record) -> Option<u64> {
        let shapes = self.shapes.read().unwrap_or_else(|e| e.into_inner());
        // A scan of a few entries: no key tuple to allocate per row.
        let (_, shape) = shapes
            .iter()
            .find(|((schema, table), _)| *schema == relation.schema && *table == relation.name)?;
        let values: Vec<_> = shape.primary_key.iter().map(|k| record.get(k)).collect();
        crate::model::row_key(&relation.schema, &relation.name, &values)
    }

    /// Replaces the shape of every table (`schema.table` → columns and primary key), as the
    /// catalog check ([`crate::catalog::check`]) read them at connect.
    pub fn set_shapes(&self, shapes: HashMap<(String, String), TableShape>) {
        *self.shapes.write().unwrap_or_else(|e| e.into_inner()) = shapes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn relation(schema: &str, name: &str) -> Arc<Relation> {
        Arc::new(Relation {
            oid: 7,
            schema: schema.into(),
            name: name.into(),
            replica_identity: b'd',
            columns: Vec::new(),
        })
    }

    #[test]
    fn the_defaults_route_what_the_engagement_system_streams() {
        let tables = Tables::new(&default_tables());
        let events = relation("public", "engagement_events");
        assert_eq!(tables.route(&events, Operation::Insert), Some("user_id"));
        assert_eq!(tables.route(&events, Operation::Update), Some("user_id"));
        assert_eq!(tables.route(&events, Operation::Delete), Some("user_id"));
        let transitions = relation("public", "engagement_state_transitions");
        assert_eq!(
            tables.route(&transitions, Operation::Insert),
            Some("user_id")
        );
        assert_eq!(tables.route(&transitions, Operation::Update), None);
        assert_eq!(tables.route(&transitions, Operation::Delete), None);
        let states = relation("public", "user_engagement_states");
        assert_eq!(tables.route(&states, Operation::Update), Some("user_id"));
        assert_eq!(tables.route(&states, Operation::Insert), None);
        let queue = relation("public", "engagement_message_queue");
        assert_eq!(tables.route(&queue, Operation::Insert), None);
        let elsewhere = relation("other", "engagement_events");
        assert_eq!(tables.route(&elsewhere, Operation::Insert), None);
    }

    #[test]
    fn wildcards_select_tables_as_supabase_bindings_do() {
        let tables = Tables::new(&default_tables());
        let names = |schema, table| -> Vec<String> {
            tables
                .matching(schema, table)
                .map(|t| t.table.clone())
                .collect()
        };
        assert_eq!(names("public", None).len(), 3);
        assert_eq!(names("*", Some("*")).len(), 3);
        assert_eq!(
            names("public", Some("engagement_events")),
            ["engagement_events"]
        );
        assert!(names("other", None).is_empty());
        assert!(names("public", Some("engagement_message_queue")).is_empty());
    }

    #[test]
    fn bad_entries_name_their_key() {
        assert!(validate(&default_tables()).is_ok());
        assert_eq!(validate(&[]), Err(TablesError::Empty));
        // The defaults after `edit`, validated: the error's text.
        let broken = |edit: fn(&mut Vec<TableConfig>)| {
            let mut tables = default_tables();
            edit(&mut tables);
            validate(&tables).unwrap_err().to_string()
        };
        let err = broken(|t| t[1].owner_column.clear());
        assert!(err.starts_with("tables[1].owner_column"), "{err}");
        let err = broken(|t| t[2].operations.clear());
        assert!(err.starts_with("tables[2].operations"), "{err}");
        let err = broken(|t| t[0].operations = vec![Operation::Insert, Operation::Insert]);
        assert!(err.starts_with("tables[0].operations"), "{err}");
        let err = broken(|t| {
            t[0].operations = vec![Operation::Insert, Operation::Update, Operation::Insert];
        });
        assert!(err.starts_with("tables[0].operations"), "{err}");
        let err = broken(|t| t[1].table = "engagement_message_queue".into());
        assert!(
            err.starts_with("tables[1]:") && err.contains("never"),
            "{err}"
        );
        let err = broken(|t| t.push(t[0].clone()));
        assert!(
            err.starts_with("tables[3]:") && err.contains("tables[0]"),
            "{err}"
        );
    }

    #[test]
    fn a_table_entry_in_the_file_replaces_the_defaults_and_a_bad_one_names_its_key() {
        let scratch = crate::config::tests::Scratch::new("tables");
        let config = scratch
            .load("[[tables]]\ntable = \"audit\"\nowner_column = \"actor\"\n")
            .unwrap();
        assert_eq!(config.tables.len(), 1);
        assert_eq!(config.tables[0].qualified(), "public.audit");
        assert_eq!(config.tables[0].operations, [Operation::Insert]);
        let config = scratch
            .load("[[tables]]\ntable = \"audit\"\noperations = [\"delete\"]\n")
            .unwrap();
        assert_eq!(config.tables[0].operations, [Operation::Delete]);
        let err = scratch
            .load("[[tables]]\ntable = \"audit\"\noperations = [\"truncate\"]\n")
            .unwrap_err();
        assert!(err.contains("tables") && err.contains("truncate"), "{err}");
    }
}
