//! Unit tests of the catalog evaluations (no database).

use super::*;
use crate::catalog::facts::{ColumnFacts, Published};
use crate::tables::default_tables;

fn column(name: &str, ty: &Type) -> ColumnFacts {
    ColumnFacts {
        name: name.into(),
        type_oid: ty.oid(),
        type_name: ty.name().into(),
    }
}

fn table_facts() -> TableFacts {
    TableFacts {
        columns: vec![column("id", &Type::INT8), column("user_id", &Type::UUID)],
        can_select: true,
        user: "relay".into(),
        replica_identity: b'f',
        identity_columns: Vec::new(),
        primary_key: vec!["id".into()],
    }
}

fn publication_of(tables: &[TableConfig]) -> Publication {
    Publication {
        insert: true,
        update: true,
        delete: true,
        tables: tables
            .iter()
            .map(|t| Published {
                schema: t.schema.clone(),
                table: t.table.clone(),
                ..Published::default()
            })
            .collect(),
        ..Publication::default()
    }
}

fn healthy() -> Facts {
    let tables = default_tables();
    Facts {
        wal_level: "logical".into(),
        publication: Some(publication_of(&tables)),
        tables: tables.iter().map(|_| Some(table_facts())).collect(),
    }
}

#[test]
fn only_logical_wal_level_decodes() {
    assert_eq!(wal_level("logical"), Ok(()));
    let err = wal_level("replica").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("wal_level is `replica`, but logical replication needs `logical`"),
        "{err}"
    );
}

#[test]
fn a_healthy_catalog_passes_start_up() {
    assert_eq!(startup(&healthy(), "pub", &default_tables()), Ok(()));
}

#[test]
fn start_up_reports_wal_level_then_the_publication_then_the_tables() {
    let tables = default_tables();
    let mut facts = healthy();
    facts.wal_level = "replica".into();
    facts.publication = None;
    facts.tables[0] = None;
    assert!(matches!(
        startup(&facts, "pub", &tables),
        Err(Mismatch::WalLevel { .. })
    ));
    facts.wal_level = "logical".into();
    let err = startup(&facts, "pub", &tables).unwrap_err();
    assert!(matches!(err, Mismatch::NoPublication { .. }));
    assert!(
        err.to_string().contains(
            "CREATE PUBLICATION pub FOR TABLE public.engagement_events, \
             public.engagement_state_transitions, public.user_engagement_states"
        ),
        "{err}"
    );
    facts.publication = Some(publication_of(&tables));
    let err = startup(&facts, "pub", &tables).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tables[0]: table public.engagement_events does not exist: run `engagement-relay \
         migrate`, or remove the entry from [[tables]]"
    );
}

#[test]
fn the_owner_column_must_exist_and_be_a_uuid() {
    let t = &default_tables()[1];
    assert_eq!(table(1, t, Some(&table_facts())), Ok(()));
    let mut facts = table_facts();
    facts.columns[1] = column("user_id", &Type::TEXT);
    let err = table(1, t, Some(&facts)).unwrap_err();
    assert!(matches!(&err, Mismatch::OwnerNotUuid { type_name, .. } if type_name == "text"));
    assert!(
        err.to_string().starts_with("tables[1].owner_column:"),
        "{err}"
    );
    facts.columns.pop();
    let err = table(1, t, Some(&facts)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tables[1].owner_column: public.engagement_state_transitions has no column `user_id`"
    );
}

#[test]
fn the_publication_must_carry_each_table_its_owner_column_and_operations() {
    let tables = default_tables();
    let mut p = publication_of(&tables[..2]);
    assert_eq!(publication("pub", &p, &tables[..2]), []);
    p.update = false;
    p.tables[1].columns = Some(vec!["id".into()]);
    let found = publication("pub", &p, &tables);
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(matches!(
        found[0],
        Mismatch::OperationNotPublished {
            entry: 0,
            operation: Operation::Update,
            ..
        }
    ));
    assert!(matches!(
        found[1],
        Mismatch::ColumnListOmitsOwner { entry: 1, .. }
    ));
    assert!(matches!(found[2], Mismatch::NotPublished { entry: 2, .. }));
    assert!(matches!(
        found[3],
        Mismatch::OperationNotPublished { entry: 2, .. }
    ));
    assert!(found[2]
        .to_string()
        .contains("ALTER PUBLICATION pub ADD TABLE public.user_engagement_states"));
}

#[test]
fn row_filters_are_reported_per_entry() {
    let tables = default_tables();
    let mut p = publication_of(&tables);
    assert!(row_filters(&p, &tables).is_empty());
    p.tables[2].row_filter = Some("(x > 1)".into());
    assert_eq!(row_filters(&p, &tables), [(2, "(x > 1)")]);
}

#[test]
fn an_existing_slot_must_be_a_permanent_logical_pgoutput_slot_of_this_database() {
    let ours = SlotKind {
        slot_type: "logical".into(),
        plugin: Some("pgoutput".into()),
        temporary: false,
        same_database: true,
    };
    assert_eq!(slot("s", &ours), Ok(()));
    let physical = SlotKind {
        slot_type: "physical".into(),
        plugin: None,
        ..ours.clone()
    };
    let err = slot("s", &physical).unwrap_err();
    assert_eq!(
        err.to_string(),
        "replication slot `s` exists but is a physical slot with plugin none; the relay needs \
         a permanent logical pgoutput slot: choose another `database.slot` or drop it"
    );
    let temporary = SlotKind {
        temporary: true,
        ..ours.clone()
    };
    assert!(slot("s", &temporary)
        .unwrap_err()
        .to_string()
        .contains("temporary logical slot"));
    let elsewhere = SlotKind {
        same_database: false,
        ..ours
    };
    assert!(matches!(
        slot("s", &elsewhere),
        Err(Mismatch::SlotInOtherDatabase { .. })
    ));
}

#[test]
fn deletes_need_the_owner_in_the_replica_identity_and_published_deletes() {
    let tables = default_tables();
    let mut facts = healthy();
    if let Some(Some(events)) = facts.tables.first_mut() {
        events.replica_identity = b'd';
        events.identity_columns = vec!["id".into()];
    }
    let err = startup(&facts, "pub", &tables).unwrap_err().to_string();
    assert!(
        err.starts_with("tables[0].operations:")
            && err.contains("ALTER TABLE public.engagement_events REPLICA IDENTITY FULL")
            && !err.contains('\n'),
        "{err}"
    );
    let mut facts = healthy();
    if let Some(p) = facts.publication.as_mut() {
        p.delete = false;
    }
    let err = startup(&facts, "pub", &tables).unwrap_err().to_string();
    assert!(err.contains("does not publish deletes"), "{err}");
}
