//! `#[register]`: records a protocol impl so dispatch finds it at run time,
//! and satisfies the protocol's hidden supertrait so the impl compiles.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Error, Item, Result};

const USAGE: &str = "`#[register]` goes on a protocol impl block, like `#[eventbus::register] impl Trackable for UserCreated { .. }`";

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> Result<TokenStream> {
    let mut errors = crate::errors::Errors::default();
    if !args.is_empty() {
        errors.push(Error::new_spanned(&args, "`#[register]` takes no options"));
    }
    let item: Item = syn::parse2(item)?;
    let Item::Impl(imp) = item else {
        return Err(errors.fail(Error::new(item.span(), USAGE)));
    };
    let Some((bang, path, _)) = &imp.trait_ else {
        return Err(errors.fail(Error::new_spanned(
            &imp.self_ty,
            format!("{USAGE}; this is an inherent impl, with no protocol to register"),
        )));
    };
    if let Some(bang) = bang {
        errors.push(Error::new_spanned(
            bang,
            "`#[register]` cannot register a negative impl",
        ));
    }
    if !imp.generics.params.is_empty() || imp.generics.where_clause.is_some() {
        errors.push(Error::new_spanned(
            &imp.generics,
            "`#[register]` does not support generic impls; register the protocol for each event type",
        ));
    }
    errors.finish()?;

    let self_ty = &imp.self_ty;
    let source = crate::source(path.span());
    // Spanned so that "not a protocol" points at the trait and "not an event"
    // at the type.
    let protocol = quote_spanned!(path.span()=> dyn #path);
    let entry = quote_spanned!(self_ty.span()=>
        ::eventbus::__private::ImplEntry::of::<#protocol, #self_ty>(#source)
    );

    Ok(quote! {
        #imp

        #[automatically_derived]
        impl ::eventbus::__private::Registration<#protocol> for #self_ty {}

        const _: () = {
            ::eventbus::__private::inventory::submit! { #entry }
        };
    })
}
