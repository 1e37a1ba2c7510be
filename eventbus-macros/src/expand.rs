//! `#[event]`: the user's struct plus the `meta` field, the `Event` impl, a
//! constructor, and the registry entry.

use crate::ast::{self, EventStruct};
use crate::attr::EventAttr;
use crate::valid;
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Item, Result};

/// `derive_above` is a `#[derive(..)]` written above `#[event]`, read back
/// from the source (see `order`).
pub(crate) fn event(
    args: TokenStream,
    item: TokenStream,
    derive_above: Option<String>,
) -> Result<TokenStream> {
    let mut errors = crate::errors::Errors::default();
    if let Some(derive) = derive_above {
        // Alone, with the struct emitted as written: the derive's impls then
        // compile, and this is the only error.
        return Err(errors.fail(syn::Error::new(
            proc_macro2::Span::call_site(),
            format_args!(
                "`{derive}` above `#[event]` runs before `#[event]` adds the `meta` field; \
                 put `#[event]` first, on the line above the derive"
            ),
        )));
    }
    let attr = EventAttr::parse(args, &mut errors);
    let item: Item = syn::parse2(item)?;
    let input = match EventStruct::from_item(item) {
        Ok(input) => input,
        Err(err) => return Err(errors.fail(err)),
    };
    let checked = valid::check(&input, &attr, &mut errors);
    errors.finish()?;
    Ok(expand(&input, &attr, &checked))
}

fn expand(input: &EventStruct, attr: &EventAttr, checked: &valid::Checked) -> TokenStream {
    let EventStruct {
        attrs,
        vis,
        ident,
        fields,
        struct_token,
        ..
    } = input;
    let name = &checked.name;
    let version = checked.version;

    let wanted = [
        ("Debug", quote!(::core::fmt::Debug)),
        ("Clone", quote!(::core::clone::Clone)),
        ("Serialize", quote!(::eventbus::__private::serde::Serialize)),
        (
            "Deserialize",
            quote!(::eventbus::__private::serde::Deserialize),
        ),
    ];
    let missing: Vec<&(&str, TokenStream)> = wanted
        .iter()
        .filter(|(name, _)| !input.user_derives(name))
        .collect();
    let derives = missing.iter().map(|(_, path)| path);
    // Point serde at the copy `eventbus` re-exports, so the user's crate
    // needs no serde dependency, but only when this expansion brings the
    // derive that introduces the attribute.
    let serde_crate = missing
        .iter()
        .any(|(name, _)| name.starts_with("Serialize") || name.starts_with("Deserialize"))
        .then(|| quote!(#[serde(crate = "::eventbus::__private::serde")]));

    let field_idents: Vec<_> = fields.iter().map(|f| f.ident.as_ref()).collect();
    let params = fields.iter().map(|f| {
        let ident = &f.ident;
        let ty = &f.ty;
        quote!(#ident: #ty)
    });
    let field_checks = fields
        .iter()
        .filter(|f| !ast::serde_handles_field(f))
        .map(|f| {
            let ty = &f.ty;
            quote_spanned!(ty.span()=>
                ::eventbus::__private::assert_field::<#ty, _>(
                    &<::eventbus::__private::FieldCheck<#ty>>::VERDICT,
                );
            )
        });
    let field_entries = fields.iter().map(|f| {
        let name = f
            .ident
            .as_ref()
            .map(|i| i.to_string().trim_start_matches("r#").to_owned())
            .unwrap_or_default();
        let ty = ast::type_string(&f.ty);
        quote!(::eventbus::__private::FieldInfo { name: #name, ty: #ty })
    });
    let doc = input.doc_summary();
    let type_name = ident.unraw().to_string();
    let source = crate::source(ident.span());
    let upcast = attr
        .upcast
        .as_ref()
        .map(|path| quote_spanned!(path.span()=> .with_upcast(#path)));
    // The field's type must be `Hash`: the error points at the option.
    let order_key = attr.key.as_ref().map(|key| {
        quote_spanned!(key.span()=>
            #[inline]
            fn order_key(&self) -> u64 {
                ::eventbus::__private::order_key_of(&self.#key)
            }
        )
    });
    let new_doc = format!(
        "Creates a `{ident}` event with fresh metadata: a new time-ordered id, the current \
         time, no actor, and no cause (the event starts its own correlation chain)."
    );

    quote! {
        // Before the struct: bodies are type-checked in order, so a field
        // type that cannot be in an event gets this error, which names the
        // fix, ahead of the errors of the derives below.
        const _: () = {
            #[allow(unused_imports)]
            use ::eventbus::__private::UnfitField as _;
            #(#field_checks)*
        };

        #[derive(#(#derives),*)]
        #serde_crate
        #(#attrs)*
        #vis #struct_token #ident {
            #(#fields,)*
            /// The standard metadata every event carries: id, name, version,
            /// time, actor, correlation and causation, and source.
            pub meta: ::eventbus::Meta,
        }

        #[automatically_derived]
        impl ::eventbus::Event for #ident {
            const NAME: &'static str = #name;
            const VERSION: u32 = #version;

            #[inline]
            fn meta(&self) -> &::eventbus::Meta {
                &self.meta
            }

            #[inline]
            fn meta_mut(&mut self) -> &mut ::eventbus::Meta {
                &mut self.meta
            }

            #order_key
        }

        impl #ident {
            #[doc = #new_doc]
            #[allow(clippy::too_many_arguments, clippy::new_without_default)]
            #[must_use]
            #vis fn new(#(#params),*) -> Self {
                Self {
                    #(#field_idents,)*
                    meta: ::eventbus::Meta::new(#name, #version, ::core::module_path!()),
                }
            }
        }

        const _: () = {
            ::eventbus::__private::inventory::submit! {
                ::eventbus::__private::EventEntry::of::<#ident>(
                    ::core::concat!(::core::module_path!(), "::", #type_name),
                    #source,
                    #doc,
                    &[#(#field_entries),*],
                )
                #upcast
            }
        };
    }
}
