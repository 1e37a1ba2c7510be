//! The options of `#[event(..)]`.

use crate::errors::Errors;
use proc_macro2::TokenStream;
use syn::meta::ParseNestedMeta;
use syn::{Error, LitInt, LitStr, Result};

/// What the user wrote inside `#[event(..)]`, with the nodes kept for spans.
#[derive(Default)]
pub(crate) struct EventAttr {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) upcast: Option<syn::Path>,
    /// The field the event is kept in order with.
    pub(crate) key: Option<syn::Ident>,
}

impl EventAttr {
    /// Parses every option. Mistakes go into `errors` and parsing goes on,
    /// so one build reports every one of them.
    pub(crate) fn parse(args: TokenStream, errors: &mut Errors) -> Self {
        let mut attr = EventAttr::default();
        if args.is_empty() {
            return attr;
        }
        let parser = syn::meta::parser(|meta| {
            if let Err(err) = attr.parse_one(&meta) {
                errors.push(err);
                // Skip this option's value so the next one still parses.
                if meta.input.peek(syn::Token![=]) {
                    let _ = meta.value().and_then(|v| v.parse::<syn::Expr>());
                }
            }
            Ok(())
        });
        if let Err(err) = syn::parse::Parser::parse2(parser, args) {
            errors.push(err);
        }
        attr
    }

    fn parse_one(&mut self, meta: &ParseNestedMeta<'_>) -> Result<()> {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            if self.name.is_some() {
                return Err(Error::new_spanned(
                    &lit,
                    "duplicate `name` in `#[event]`; give it once",
                ));
            }
            self.name = Some(lit);
            Ok(())
        } else if meta.path.is_ident("version") {
            let lit: LitInt = meta.value()?.parse()?;
            if self.version.is_some() {
                return Err(Error::new_spanned(
                    &lit,
                    "duplicate `version` in `#[event]`; give it once",
                ));
            }
            self.version = Some(lit);
            Ok(())
        } else if meta.path.is_ident("upcast") {
            let path: syn::Path = meta.value()?.parse()?;
            if self.upcast.is_some() {
                return Err(Error::new_spanned(
                    &path,
                    "duplicate `upcast` in `#[event]`; give it once",
                ));
            }
            self.upcast = Some(path);
            Ok(())
        } else if meta.path.is_ident("key") {
            let field: syn::Ident = meta.value()?.parse().map_err(|err| {
                Error::new(
                    err.span(),
                    "`key` in `#[event]` takes the name of one of the event's fields, as in `key = order_id`",
                )
            })?;
            if self.key.is_some() {
                return Err(Error::new_spanned(
                    &field,
                    "duplicate `key` in `#[event]`; give it once",
                ));
            }
            self.key = Some(field);
            Ok(())
        } else {
            Err(meta.error(format_args!(
                "unknown `#[event]` option `{}`; the options are `name = \"...\"`, `version = N`, `upcast = path::to::fn` and `key = field`",
                path_string(&meta.path),
            )))
        }
    }
}

fn path_string(path: &syn::Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}
