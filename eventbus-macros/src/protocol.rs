//! `#[protocol]`: a trait that turns an event into one kind of side-effect
//! payload, plus the machinery that makes forgetting `#[register]` a compile
//! error instead of a silently skipped side effect.

use crate::errors::Errors;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Error, FnArg, ItemTrait, Result, ReturnType, TraitItem};

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> Result<TokenStream> {
    let mut errors = Errors::default();
    if !args.is_empty() {
        errors.push(Error::new_spanned(
            &args,
            "`#[protocol]` takes no options; the protocol is named after its trait",
        ));
    }
    let item: ItemTrait = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(_) => {
            let item: syn::Item = syn::parse2(item)?;
            return Err(errors.fail(Error::new(
                item.span(),
                "`#[protocol]` goes on a trait with one method, like `trait Auditable { fn audit(&self) -> AuditRecord; }`",
            )));
        }
    };
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.push(Error::new_spanned(
            &item.generics,
            "`#[protocol]` does not support generic parameters; a protocol maps every event to one payload type",
        ));
    }
    let methods: Vec<&syn::TraitItemFn> = item
        .items
        .iter()
        .filter_map(|i| match i {
            TraitItem::Fn(f) => Some(f),
            _ => None,
        })
        .collect();
    for other in item.items.iter().filter(|i| !matches!(i, TraitItem::Fn(_))) {
        errors.push(Error::new_spanned(
            other,
            "`#[protocol]` traits hold exactly one method; move this item elsewhere",
        ));
    }
    let method = match methods.as_slice() {
        [method] => Some(*method),
        [] => {
            errors.push(Error::new_spanned(
                &item.ident,
                "`#[protocol]` trait needs one method that takes `&self` and returns the payload, like `fn audit(&self) -> AuditRecord;`",
            ));
            None
        }
        [_, extra @ ..] => {
            for f in extra {
                errors.push(Error::new_spanned(
                    &f.sig,
                    "`#[protocol]` traits hold exactly one method; a second side effect is a second protocol",
                ));
            }
            None
        }
    };
    let output = method.and_then(|m| check_method(m, &mut errors));
    errors.finish()?;
    let (method, output) = (method.expect("checked"), output.expect("checked"));
    Ok(emit(&item, method, output))
}

/// The method must be `fn name(&self) -> Payload`: that is what dispatch calls.
fn check_method<'a>(method: &'a syn::TraitItemFn, errors: &mut Errors) -> Option<&'a syn::Type> {
    let sig = &method.sig;
    let mut ok = true;
    if let Some(asyncness) = &sig.asyncness {
        errors.push(Error::new_spanned(
            asyncness,
            "`#[protocol]` methods are not async; build the payload here and do the I/O in a consumer's sink",
        ));
        ok = false;
    }
    if !sig.generics.params.is_empty() {
        errors.push(Error::new_spanned(
            &sig.generics,
            "`#[protocol]` methods take no generic parameters",
        ));
        ok = false;
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
        Some(other) => {
            errors.push(Error::new_spanned(
                other,
                "`#[protocol]` methods take `&self` only; the event is all the input a payload needs",
            ));
            ok = false;
        }
        None => {
            errors.push(Error::new_spanned(
                sig,
                "`#[protocol]` methods take `&self`, as in `fn audit(&self) -> AuditRecord;`",
            ));
            ok = false;
        }
    }
    for extra in inputs {
        errors.push(Error::new_spanned(
            extra,
            "`#[protocol]` methods take `&self` only; the event is all the input a payload needs",
        ));
        ok = false;
    }
    match &sig.output {
        ReturnType::Type(_, ty) if ok => Some(ty),
        ReturnType::Type(..) => None,
        ReturnType::Default => {
            errors.push(Error::new_spanned(
                sig,
                "`#[protocol]` methods return the payload, as in `fn audit(&self) -> AuditRecord;`",
            ));
            None
        }
    }
}

fn emit(item: &ItemTrait, method: &syn::TraitItemFn, output: &syn::Type) -> TokenStream {
    let ident = &item.ident;
    let vis = &item.vis;
    let attrs = &item.attrs;
    let items = &item.items;
    let supertraits = item.supertraits.iter();
    let hidden = format_ident!("__EventbusRegistered{}", ident.unraw());
    let unsafety = &item.unsafety;
    let method_ident = &method.sig.ident;
    let name = ident.unraw().to_string();
    let method_name = method_ident.to_string();
    let output_name = crate::ast::type_string(output);
    let source = crate::source(ident.span());
    let message = format!("`{{Self}}` implements `{name}` but the impl is not registered");
    let note = format!(
        "add `#[eventbus::register]` on the line above `impl {name} for {{Self}}`; \
         registration is how dispatch and consumers find the impl"
    );

    quote! {
        #(#attrs)*
        #vis #unsafety trait #ident: #hidden #(+ #supertraits)* {
            #(#items)*
        }

        #[doc(hidden)]
        #[diagnostic::on_unimplemented(
            message = #message,
            label = "this impl is not registered",
            note = #note,
        )]
        #vis trait #hidden {}

        #[automatically_derived]
        impl<T> #hidden for T
        where
            T: ?::core::marker::Sized + ::eventbus::__private::Registration<dyn #ident>,
        {
        }

        // For every lifetime, not only `'static`: see `eventbus::Protocol`.
        #[automatically_derived]
        impl<'__eventbus> ::eventbus::Protocol for dyn #ident + '__eventbus {
            type Output = #output;
            const NAME: &'static str = #name;

            #[inline]
            fn type_id() -> ::core::any::TypeId {
                ::core::any::TypeId::of::<dyn #ident>()
            }
        }

        #[automatically_derived]
        impl<E: #ident> ::eventbus::__private::Dispatcher<E> for dyn #ident {
            #[inline]
            fn call(event: &E) -> #output {
                <E as #ident>::#method_ident(event)
            }
        }

        const _: () = {
            ::eventbus::__private::inventory::submit! {
                ::eventbus::__private::ProtocolEntry::of::<dyn #ident>(
                    ::core::concat!(::core::module_path!(), "::", #name),
                    #method_name,
                    #output_name,
                    #source,
                )
            }
        };
    }
}
