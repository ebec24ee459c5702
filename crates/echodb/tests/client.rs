//! The client over a real vault: persistence across reopening, and one owner at a time.

use std::collections::BTreeMap;

use echodb::{Client, ObjectError, OpenError, Query, SpaceError, Value};

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

#[test]
fn a_vault_keeps_identity_spaces_and_objects_across_reopening() -> Result {
    let dir = tempfile::tempdir()?;
    let vault = dir.path().join("vault");
    let (identity, space_key, id, text) = {
        let mut client = Client::open(&vault)?;
        assert!(client.identity().is_none());
        assert!(matches!(
            client.create_space(None),
            Err(SpaceError::NoIdentity { .. })
        ));
        let identity = client.create_identity(Some("alice"))?;
        let space = client.create_space(Some("home"))?;
        let id = space.add(
            "task",
            BTreeMap::from([("title".to_owned(), Value::from("a"))]),
            None,
        )?;
        let text = space.create_text(None)?;
        space.insert_text(text, 0, "hi")?;
        (identity, space.key(), id, text)
    };
    let client = Client::open(&vault)?;
    assert_eq!(client.identity(), Some(&identity));
    let spaces = client.spaces()?;
    assert_eq!(spaces.len(), 1);
    assert_eq!(spaces[0].key, space_key);
    assert_eq!(spaces[0].name.as_deref(), Some("home"));
    let space = client.space(client.resolve_space(&space_key.to_string()[..6])?)?;
    assert_eq!(
        space.get(id)?.value.at_path("title"),
        Some(&Value::from("a"))
    );
    assert_eq!(space.text(text)?, "hi");
    assert_eq!(space.query(&Query::of_type("task"))?.len(), 1);
    assert_eq!(space.members()?[0].display_name.as_deref(), Some("alice"));
    assert!(matches!(
        space.insert_text(text, 10, "x"),
        Err(ObjectError::Refused { .. })
    ));
    assert!(matches!(space.text(id), Err(ObjectError::NotText { .. })));
    Ok(())
}

#[test]
fn a_second_open_of_a_vault_is_refused_naming_the_holder() -> Result {
    let dir = tempfile::tempdir()?;
    let _first = Client::open(dir.path())?;
    match Client::open(dir.path()) {
        Err(OpenError::Locked { holder, .. }) => {
            assert_eq!(holder, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    Ok(())
}
