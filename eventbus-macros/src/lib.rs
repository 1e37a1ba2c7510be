//! Implementation detail of the `eventbus` crate.
//!
//! Everything here is re-exported by `eventbus`; name that crate instead. The
//! expansions refer to `::eventbus::__private` only, so a user crate needs no
//! other dependency to write `#[event]`, `#[protocol]` or `#[register]`.

mod ast;
mod attr;
mod case;
mod errors;
mod expand;
mod order;
mod protocol;
mod register;
mod valid;

use proc_macro::TokenStream;

/// Turns a struct with named fields into an event.
///
/// The struct keeps its fields, docs, attributes and derives, and gains:
/// - a `pub meta: eventbus::Meta` field with the standard metadata;
/// - `Debug`, `Clone`, `Serialize` and `Deserialize`, unless already derived;
/// - an `eventbus::Event` impl with the name and version as consts;
/// - `new(..)`, taking the declared fields in order and filling `meta`;
/// - an entry in `eventbus::registry()`.
///
/// # Options
///
/// - `name = "user.created"`: the stable name. It defaults to the type name
///   in lowercase words joined by dots (`UserCreated` is `user.created`).
///   Lowercase letters, digits, `.`, `_` and `-`.
/// - `version = 2`: the schema version, from 1 (the default).
/// - `upcast = path::to::fn`: reads events stored at older versions. The
///   function, `fn(u32, eventbus::Value) -> Result<eventbus::Value,
///   eventbus::BoxError>`, gets the stored version and JSON and returns the
///   JSON of this version. Needs `version = 2` or higher.
///
/// # Examples
///
/// ```
/// use eventbus::{event, Event};
///
/// /// A comment was posted.
/// #[event(name = "comment.posted", version = 2)]
/// pub struct CommentPosted {
///     pub comment_id: u64,
///     pub body: String,
/// }
///
/// let posted = CommentPosted::new(1, "first!".into());
/// assert_eq!(posted.meta().name, "comment.posted");
/// assert_eq!(CommentPosted::VERSION, 2);
/// ```
///
/// Write `#[event]` above the struct's own `#[derive(..)]`: a derive above it
/// would run on the struct before `meta` is added, and is refused.
///
/// Enums, tuple structs, unit structs and generic structs are refused with a
/// message that says what to write instead:
///
/// ```compile_fail
/// #[eventbus::event]
/// enum UserChanged {
///     Created { user_id: u64 },
/// }
/// ```
#[proc_macro_attribute]
pub fn event(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(input.clone());
    let site = proc_macro::Span::call_site();
    let derive_above = site
        .local_file()
        .and_then(|file| order::derive_above(&file, site.line(), site.column()));
    expand::event(args.into(), item, derive_above)
        .unwrap_or_else(|err| with_error(input, err))
        .into()
}

/// Declares a protocol: a trait that turns events into one kind of side-effect
/// payload.
///
/// The trait holds one method that takes `&self` and returns the payload.
/// Events implement it with impls marked `#[register]`, and
/// `eventbus::dispatch::<dyn YourTrait>(&event)` runs it, returning `None` for
/// events without an impl. The built-in `Trackable`, `Notifiable` and
/// `Webhookable` are declared with this attribute too.
///
/// # Examples
///
/// ```
/// use eventbus::{event, protocol, register};
///
/// #[event]
/// struct RoleGranted {
///     user_id: u64,
///     role: String,
/// }
///
/// /// Entries for the compliance audit log.
/// #[protocol]
/// pub trait Auditable {
///     fn audit(&self) -> String;
/// }
///
/// #[register]
/// impl Auditable for RoleGranted {
///     fn audit(&self) -> String {
///         format!("user {} granted {}", self.user_id, self.role)
///     }
/// }
///
/// let line = eventbus::dispatch::<dyn Auditable>(&RoleGranted::new(1, "admin".into()));
/// assert_eq!(line.as_deref(), Some("user 1 granted admin"));
/// ```
#[proc_macro_attribute]
pub fn protocol(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(input.clone());
    protocol::expand(args.into(), item)
        .unwrap_or_else(|err| with_error(input, err))
        .into()
}

/// Registers a protocol impl for an event, so dispatch and consumers find it.
///
/// Every impl of a protocol needs it: an impl without it does not compile,
/// and the error says to add it. That way a side effect is never skipped
/// because someone forgot to wire it up.
///
/// # Examples
///
/// ```
/// use eventbus::{event, register, Track, Trackable};
///
/// #[event]
/// struct TrialStarted {
///     user_id: u64,
/// }
///
/// #[register]
/// impl Trackable for TrialStarted {
///     fn track(&self) -> Track {
///         Track::new(self, self.user_id)
///     }
/// }
/// # assert!(eventbus::track(&TrialStarted::new(1)).is_some());
/// ```
///
/// Without the attribute:
///
/// ```compile_fail
/// use eventbus::{event, Track, Trackable};
///
/// #[event]
/// struct TrialStarted {
///     user_id: u64,
/// }
///
/// impl Trackable for TrialStarted {
///     fn track(&self) -> Track {
///         Track::new(self, self.user_id)
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn register(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(input.clone());
    register::expand(args.into(), item)
        .unwrap_or_else(|err| with_error(input, err))
        .into()
}

/// Where the item at `span` was written, for the registry: the file and
/// line there, and the crate's manifest directory and package name, with
/// which the registry names a dependency's files the same on every machine.
fn source(span: proc_macro2::Span) -> proc_macro2::TokenStream {
    quote::quote_spanned! {span=>
        ::eventbus::__private::Source::new(
            ::core::file!(),
            ::core::line!(),
            ::core::option_env!("CARGO_MANIFEST_DIR"),
            ::core::option_env!("CARGO_PKG_NAME"),
        )
    }
}

/// Emits the user's item untouched next to the error, so one mistake gives one
/// diagnostic instead of a cascade of "cannot find type" errors.
fn with_error(input: TokenStream, err: syn::Error) -> proc_macro2::TokenStream {
    let mut tokens = proc_macro2::TokenStream::from(input);
    tokens.extend(err.into_compile_error());
    tokens
}
