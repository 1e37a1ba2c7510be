//! Checks that need the whole input: the name's spelling, the version, the
//! fields. Every problem is collected so one build reports all of them.

use crate::ast::EventStruct;
use crate::attr::EventAttr;
use crate::errors::Errors;
use syn::Error;

/// The settings `#[event]` expands with, once they are known to be valid.
pub(crate) struct Checked {
    pub(crate) name: String,
    pub(crate) version: u32,
}

/// Checks the input, pushing every problem into `errors`. The result is only
/// meaningful when `errors` stays empty.
pub(crate) fn check(input: &EventStruct, attr: &EventAttr, errors: &mut Errors) -> Checked {
    if let Some(param) = input.generics.params.first() {
        errors.push(Error::new_spanned(
            &input.generics,
            format_args!(
                "`#[event]` does not support generic parameters such as `{}`; an event is one concrete type, registered under one name",
                quote::quote!(#param),
            ),
        ));
    } else if let Some(where_clause) = &input.generics.where_clause {
        errors.push(Error::new_spanned(
            where_clause,
            "`#[event]` does not support `where` clauses; an event is one concrete type",
        ));
    }

    if let Some(key) = &attr.key
        && !input.fields.iter().any(|f| f.ident.as_ref() == Some(key))
    {
        let fields: Vec<String> = input
            .fields
            .iter()
            .filter_map(|f| f.ident.as_ref().map(ToString::to_string))
            .map(|name| format!("`{name}`"))
            .collect();
        let fields = if fields.is_empty() {
            "it has none".to_owned()
        } else {
            format!("its fields are {}", fields.join(", "))
        };
        errors.push(Error::new_spanned(
            key,
            format_args!(
                "`key = {key}` in `#[event]` names no field of `{}`; {fields}",
                input.ident
            ),
        ));
    }

    for field in &input.fields {
        if field.ident.as_ref().is_some_and(|i| i == "meta") {
            errors.push(Error::new_spanned(
                field.ident.as_ref(),
                "`#[event]` adds a field named `meta` for the event's metadata; rename this field",
            ));
        }
    }

    let name = match &attr.name {
        Some(lit) => {
            let name = lit.value();
            if let Err(why) = check_name(&name) {
                errors.push(Error::new_spanned(lit, why));
            }
            name
        }
        None => crate::case::dotted(&input.ident.to_string()),
    };

    let version = match &attr.version {
        Some(lit) => match lit.base10_parse::<u32>() {
            Ok(0) => {
                errors.push(Error::new_spanned(
                    lit,
                    "`#[event]` versions start at 1; write `version = 1` or leave it out",
                ));
                1
            }
            Ok(v) => v,
            Err(_) => {
                errors.push(Error::new_spanned(
                    lit,
                    "`#[event]` version must be a whole number from 1 to 4294967295",
                ));
                1
            }
        },
        None => 1,
    };

    if let (Some(path), 1) = (&attr.upcast, version) {
        errors.push(Error::new_spanned(
            path,
            "`#[event]` `upcast` converts older versions, so it needs `version = 2` or higher",
        ));
    }

    Checked { name, version }
}

/// Names are what people grep for and what durable logs store, so they stay
/// plain: lowercase words of letters and digits joined by `.`, `_` or `-`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(
            "`#[event]` name is empty; write a name such as `name = \"user.created\"`".into(),
        );
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`#[event]` name `{name}` contains {bad:?}; use lowercase letters, digits, `.`, `_` and `-`, as in `user.created`"
        ));
    }
    let separators = |c: char| matches!(c, '.' | '_' | '-');
    if name.starts_with(separators) || name.ends_with(separators) {
        return Err(format!(
            "`#[event]` name `{name}` starts or ends with a separator; names look like `user.created`"
        ));
    }
    if name.contains("..") {
        return Err(format!(
            "`#[event]` name `{name}` has an empty segment; names look like `user.created`"
        ));
    }
    Ok(())
}
