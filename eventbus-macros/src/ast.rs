//! The `#[event]` input, kept as syn nodes so every error can point at the
//! exact token that caused it.

use syn::spanned::Spanned;
use syn::{Attribute, Error, Field, Generics, Ident, Item, Result, Visibility};

/// A struct with named fields, as written by the user.
pub(crate) struct EventStruct {
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    pub(crate) fields: Vec<Field>,
    pub(crate) struct_token: syn::token::Struct,
}

impl EventStruct {
    /// Accepts only what an event can be. Shape errors that make the rest
    /// meaningless (an enum, a tuple struct) are returned at once.
    pub(crate) fn from_item(item: Item) -> Result<Self> {
        let item = match item {
            Item::Struct(item) => item,
            Item::Enum(item) => {
                return Err(Error::new_spanned(
                    item.enum_token,
                    "`#[event]` does not support enums; use a struct with named fields, one struct per event",
                ));
            }
            Item::Union(item) => {
                return Err(Error::new_spanned(
                    item.union_token,
                    "`#[event]` does not support unions; use a struct with named fields",
                ));
            }
            other => {
                return Err(Error::new(
                    other.span(),
                    "`#[event]` goes on a struct with named fields",
                ));
            }
        };
        let fields = match item.fields {
            syn::Fields::Named(fields) => fields.named.into_iter().collect(),
            syn::Fields::Unnamed(fields) => {
                return Err(Error::new_spanned(
                    fields,
                    "`#[event]` does not support tuple structs; name the fields, as in `struct UserCreated { user_id: u64 }`",
                ));
            }
            syn::Fields::Unit => {
                return Err(Error::new_spanned(
                    &item.ident,
                    "`#[event]` does not support unit structs; use braces, as in `struct CacheCleared {}`",
                ));
            }
        };
        Ok(EventStruct {
            attrs: item.attrs,
            vis: item.vis,
            ident: item.ident,
            generics: item.generics,
            fields,
            struct_token: item.struct_token,
        })
    }

    /// The first paragraph of the struct's doc comment, on one line.
    pub(crate) fn doc_summary(&self) -> String {
        let mut lines = Vec::new();
        for attr in &self.attrs {
            if !attr.path().is_ident("doc") {
                continue;
            }
            let syn::Meta::NameValue(nv) = &attr.meta else {
                continue;
            };
            let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
            else {
                continue;
            };
            let text = s.value();
            let text = text.trim();
            if text.is_empty() {
                if lines.is_empty() {
                    continue;
                }
                break;
            }
            lines.push(text.to_owned());
        }
        lines.join(" ")
    }

    /// Which of the traits `#[event]` derives the user already derives, so the
    /// expansion does not derive them twice.
    pub(crate) fn user_derives(&self, name: &str) -> bool {
        self.attrs.iter().any(|attr| {
            if !attr.path().is_ident("derive") {
                return false;
            }
            let mut found = false;
            let _ = attr.parse_nested_meta(|meta| {
                if meta.path.segments.last().is_some_and(|s| s.ident == name) {
                    found = true;
                }
                Ok(())
            });
            found
        })
    }
}

/// A type rendered the way a person writes it: `Option<Vec<u8>>`, not
/// `Option < Vec < u8 > >`. Used in the registry's field lines.
pub(crate) fn type_string(ty: &syn::Type) -> String {
    let raw = quote::quote!(#ty).to_string();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.peek().copied();
            let glue = matches!(prev, Some('<' | '&' | '(' | '[' | ':'))
                || matches!(next, Some('<' | '>' | ',' | ')' | ']' | ':' | ';'))
                || (prev == Some('>') && next == Some('>'));
            if glue {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Whether the field's serde attributes take over its serialization
/// (`skip`, `with` and friends), in which case its type need not be
/// serializable itself.
pub(crate) fn serde_handles_field(field: &syn::Field) -> bool {
    const KEYS: [&str; 7] = [
        "skip",
        "skip_serializing",
        "skip_deserializing",
        "with",
        "serialize_with",
        "deserialize_with",
        "getter",
    ];
    field.attrs.iter().any(|attr| {
        if !attr.path().is_ident("serde") {
            return false;
        }
        let mut found = false;
        let _ = attr.parse_nested_meta(|meta| {
            if KEYS.iter().any(|k| meta.path.is_ident(k)) {
                found = true;
            }
            if meta.input.peek(syn::Token![=]) {
                let _ = meta.value()?.parse::<syn::Expr>()?;
            } else if meta.input.peek(syn::token::Paren) {
                let content;
                syn::parenthesized!(content in meta.input);
                let _ = content.parse::<proc_macro2::TokenStream>()?;
            }
            Ok(())
        });
        found
    })
}

#[cfg(test)]
mod tests {
    use super::type_string;

    fn render(src: &str) -> String {
        type_string(&syn::parse_str(src).unwrap())
    }

    #[test]
    fn types_read_as_written() {
        assert_eq!(render("u64"), "u64");
        assert_eq!(render("Option<Vec<u8>>"), "Option<Vec<u8>>");
        assert_eq!(
            render("std::collections::HashMap<String, u32>"),
            "std::collections::HashMap<String, u32>"
        );
        assert_eq!(render("[u8; 16]"), "[u8; 16]");
        assert_eq!(render("(u32, String)"), "(u32, String)");
    }
}
