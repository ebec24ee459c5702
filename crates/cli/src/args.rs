//! Parsing `field=value` arguments (before the vault is opened, so bad input touches nothing).

use echodb::Value;

/// One `field=value` argument.
#[derive(Debug, Clone)]
pub struct Field {
    /// The field path (dotted paths reach into maps).
    pub name: String,
    /// The value: JSON if it parses as JSON, else the text as a string.
    pub value: Value,
}

/// Parses `field=value`; the value is JSON if it parses as JSON, else a string.
pub fn parse_field(text: &str) -> Result<Field, String> {
    let Some((name, raw)) = text.split_once('=') else {
        return Err(format!(
            "expected FIELD=VALUE, got {text:?}; e.g. title=\"buy milk\" or done=false"
        ));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!(
            "the field name before '=' is empty in {text:?}; e.g. title=\"buy milk\""
        ));
    }
    if name.split('.').any(str::is_empty) {
        return Err(format!(
            "field {name:?} has an empty part; dotted paths look like address.city"
        ));
    }
    let value = match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(json) => Value::from_json(&json),
        Err(_) => Value::String(raw.to_owned()),
    };
    Ok(Field {
        name: name.to_owned(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_json_else_strings() -> Result<(), String> {
        assert_eq!(parse_field("done=false")?.value, Value::Bool(false));
        assert_eq!(parse_field("n=3")?.value, Value::Int(3));
        assert_eq!(
            parse_field("title=buy milk")?.value,
            Value::String("buy milk".into())
        );
        assert_eq!(
            parse_field("title=\"42\"")?.value,
            Value::String("42".into())
        );
        assert_eq!(parse_field("eq=a=b")?.value, Value::String("a=b".into()));
        assert!(parse_field("title").is_err());
        assert!(parse_field("=x").is_err());
        assert!(parse_field("a..b=1").is_err());
        Ok(())
    }
}
