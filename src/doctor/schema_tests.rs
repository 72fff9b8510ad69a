//! Unit tests of the schema evaluations (no database).

use super::*;
use crate::catalog::{ColumnFacts, Published};
use crate::doctor::report::assert_check;
use crate::doctor::Status;
use crate::model::Operation;
use crate::tables::default_tables;
use tokio_postgres::types::Type;

fn facts_with_owner(ty: Option<&Type>) -> TableFacts {
    TableFacts {
        columns: ty
            .map(|ty| ColumnFacts {
                name: "user_id".into(),
                type_oid: ty.oid(),
                type_name: ty.name().into(),
            })
            .into_iter()
            .collect(),
        can_select: true,
        user: "relay".into(),
        replica_identity: b'f',
        identity_columns: Vec::new(),
        primary_key: Vec::new(),
    }
}

fn events() -> TableConfig {
    default_tables().remove(0)
}

fn published(t: &TableConfig) -> Published {
    Published {
        schema: t.schema.clone(),
        table: t.table.clone(),
        ..Published::default()
    }
}

fn publication_of(tables: &[TableConfig]) -> Publication {
    Publication {
        insert: true,
        update: true,
        delete: true,
        tables: tables.iter().map(published).collect(),
        ..Publication::default()
    }
}

#[test]
fn a_publication_carrying_every_table_and_operation_passes() {
    let tables = default_tables();
    let c = evaluate_publication("pub", Some(&publication_of(&tables)), &tables);
    assert_eq!(c.status, Status::Pass, "{}", c.detail);
    assert!(
        c.detail
            .contains("every configured table: public.engagement_events, "),
        "{}",
        c.detail
    );
}

#[test]
fn a_missing_publication_fails_with_the_create_statement() {
    let tables = default_tables();
    let c = evaluate_publication("pub", None, &tables);
    assert_eq!(c.status, Status::Fail);
    let fix = c.fix.unwrap();
    assert!(
        fix.contains("CREATE PUBLICATION pub FOR TABLE public.engagement_events, public.engagement_state_transitions, public.user_engagement_states WITH (publish = 'insert, update, delete')"),
        "{fix}"
    );
}

#[test]
fn a_missing_table_or_operation_fails_naming_it() {
    let tables = default_tables();
    let mut p = publication_of(&tables[..1]);
    p.update = false;
    p.delete = true;
    let c = evaluate_publication("pub", Some(&p), &tables);
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.detail.contains("public.user_engagement_states") && c.detail.contains("updates"),
        "{}",
        c.detail
    );
    let fix = c.fix.unwrap();
    assert!(fix.contains("ALTER PUBLICATION pub ADD TABLE public.engagement_state_transitions, public.user_engagement_states;"), "{fix}");
    assert!(
        fix.contains("SET (publish = 'insert, update, delete')"),
        "keeps what it published: {fix}"
    );
}

#[test]
fn a_column_list_without_the_owner_fails_and_a_row_filter_warns() {
    let tables = vec![events()];
    let mut p = publication_of(&tables);
    p.tables[0].columns = Some(vec!["id".into(), "user_id".into()]);
    assert_eq!(
        evaluate_publication("pub", Some(&p), &tables).status,
        Status::Pass
    );
    p.tables[0].row_filter = Some("(event_type = 'x'::text)".into());
    assert_eq!(
        evaluate_publication("pub", Some(&p), &tables).status,
        Status::Warn
    );
    p.tables[0].columns = Some(vec!["id".into()]);
    assert_check(
        &evaluate_publication("pub", Some(&p), &tables),
        Status::Fail,
        "omits the owner column user_id",
    );
}

#[test]
fn a_table_needs_a_uuid_owner_column_it_may_read() {
    let t = events();
    let ok = facts_with_owner(Some(&Type::UUID));
    let c = evaluate_table(0, &t, Some(&ok));
    assert_eq!(c.status, Status::Pass);
    assert_eq!(c.id, "table:public.engagement_events");
    assert_eq!(evaluate_table(0, &t, None).status, Status::Fail);
    let text = facts_with_owner(Some(&Type::TEXT));
    assert!(evaluate_table(0, &t, Some(&text))
        .detail
        .contains("is text"));
    let none = facts_with_owner(None);
    assert_eq!(evaluate_table(0, &t, Some(&none)).status, Status::Fail);
    let denied = TableFacts {
        can_select: false,
        ..ok
    };
    let c = evaluate_table(0, &t, Some(&denied));
    assert_eq!(
        c.fix.unwrap(),
        "GRANT SELECT ON public.engagement_events TO relay;"
    );
}

#[test]
fn deletes_need_a_replica_identity_covering_the_owner_column() {
    let t = events();
    assert!(t.operations.contains(&Operation::Delete), "the default");
    let by_key = TableFacts {
        replica_identity: b'd',
        identity_columns: vec!["id".into()],
        ..facts_with_owner(Some(&Type::UUID))
    };
    let c = evaluate_table(0, &t, Some(&by_key));
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("replica identity"), "{}", c.detail);
    assert!(c
        .fix
        .unwrap()
        .starts_with("ALTER TABLE public.engagement_events REPLICA IDENTITY FULL;"));
    // An identity index that covers the owner is enough; without deletes nothing is needed.
    let covering = TableFacts {
        replica_identity: b'i',
        identity_columns: vec!["user_id".into(), "id".into()],
        ..by_key.clone()
    };
    assert_eq!(evaluate_table(0, &t, Some(&covering)).status, Status::Pass);
    let inserts = TableConfig {
        operations: vec![Operation::Insert, Operation::Update],
        ..t
    };
    assert_eq!(
        evaluate_table(0, &inserts, Some(&by_key)).status,
        Status::Pass
    );
}

#[test]
fn the_message_queue_must_not_be_streamed() {
    assert_eq!(
        evaluate_message_queue(false, false, false, "pub").status,
        Status::Skip
    );
    assert_eq!(
        evaluate_message_queue(false, true, false, "pub").status,
        Status::Pass
    );
    let c = evaluate_message_queue(false, true, true, "pub");
    assert_eq!(c.status, Status::Warn);
    assert_eq!(
        c.fix.unwrap(),
        "ALTER PUBLICATION pub DROP TABLE public.engagement_message_queue;"
    );
    assert_eq!(
        evaluate_message_queue(true, true, true, "pub").status,
        Status::Fail
    );
}
