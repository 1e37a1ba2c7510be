//! What the macros submit through `inventory`, one static per item. Not public
//! API: the types are reached through `__private` by generated code only.

use crate::event::{AnyEvent, DecodeError, Event};
use crate::protocol::base::Protocol;
use std::any::{Any, TypeId};
use std::marker::PhantomData;

/// Where a macro was written, as the compiler and Cargo describe it when
/// the user's crate is built.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub(crate) file: &'static str,
    pub(crate) line: u32,
    /// `CARGO_MANIFEST_DIR` of the crate that holds the macro.
    manifest_dir: Option<&'static str>,
    /// `CARGO_PKG_NAME` of that crate.
    package: Option<&'static str>,
}

impl Source {
    #[doc(hidden)]
    pub const fn new(
        file: &'static str,
        line: u32,
        manifest_dir: Option<&'static str>,
        package: Option<&'static str>,
    ) -> Self {
        Source {
            file,
            line,
            manifest_dir,
            package,
        }
    }

    /// The file as the registry shows it: the same on every checkout and
    /// every OS, so a committed registry file stays fresh.
    ///
    /// Cargo names the files of workspace members relative to the workspace
    /// root, which is kept. It names the files of other crates (from
    /// crates.io, git, or a path outside the workspace) by absolute paths,
    /// which differ from machine to machine: those become relative to the
    /// crate's manifest directory, behind the package's name.
    pub(crate) fn portable_file(&self) -> String {
        let path = std::path::Path::new(self.file);
        let relative = match (path.is_absolute(), self.manifest_dir, self.package) {
            (true, Some(dir), Some(package)) => path
                .strip_prefix(dir)
                .ok()
                .map(|rest| format!("{package}/{}", rest.display())),
            _ => None,
        };
        relative
            .unwrap_or_else(|| self.file.to_owned())
            .replace('\\', "/")
    }
}

/// One `#[event]` struct.
#[derive(Debug)]
pub struct EventEntry {
    pub(crate) name: &'static str,
    pub(crate) version: u32,
    pub(crate) type_path: &'static str,
    pub(crate) source: Source,
    pub(crate) doc: &'static str,
    pub(crate) fields: &'static [FieldInfo],
    pub(crate) type_id: fn() -> TypeId,
    pub(crate) decode: fn(&[u8]) -> serde_json::Result<AnyEvent>,
    pub(crate) decode_value: fn(serde_json::Value) -> serde_json::Result<AnyEvent>,
    pub(crate) upcast: Option<Upcast>,
}

/// Converts the JSON of an event stored at an older version (the `u32`) to
/// the JSON of the current version. Named with `#[event(upcast = ...)]`.
pub type Upcast = fn(u32, serde_json::Value) -> Result<serde_json::Value, crate::BoxError>;

impl EventEntry {
    #[doc(hidden)]
    pub const fn of<E: Event>(
        type_path: &'static str,
        source: Source,
        doc: &'static str,
        fields: &'static [FieldInfo],
    ) -> Self {
        EventEntry {
            name: E::NAME,
            version: E::VERSION,
            type_path,
            source,
            doc,
            fields,
            type_id: TypeId::of::<E>,
            decode: decode::<E>,
            decode_value: decode_value::<E>,
            upcast: None,
        }
    }

    #[doc(hidden)]
    #[must_use]
    pub const fn with_upcast(mut self, upcast: Upcast) -> Self {
        self.upcast = Some(upcast);
        self
    }

    pub(crate) fn decode(&self, json: &[u8]) -> Result<AnyEvent, DecodeError> {
        (self.decode)(json).map_err(|source| DecodeError::Invalid {
            name: self.name.to_owned(),
            version: self.version,
            source,
        })
    }
}

fn decode_value<E: Event>(json: serde_json::Value) -> serde_json::Result<AnyEvent> {
    serde_json::from_value::<E>(json).map(AnyEvent::new)
}

fn decode<E: Event>(json: &[u8]) -> serde_json::Result<AnyEvent> {
    serde_json::from_slice::<E>(json).map(AnyEvent::new)
}

/// One field of an event, as declared: see [`EventInfo::fields`](super::EventInfo::fields).
#[derive(Debug)]
pub struct FieldInfo {
    #[doc(hidden)]
    pub name: &'static str,
    #[doc(hidden)]
    pub ty: &'static str,
}

/// One `#[protocol]` trait.
#[derive(Debug)]
pub struct ProtocolEntry {
    pub(crate) name: &'static str,
    pub(crate) path: &'static str,
    pub(crate) method: &'static str,
    pub(crate) output: &'static str,
    pub(crate) source: Source,
    pub(crate) type_id: fn() -> TypeId,
}

impl ProtocolEntry {
    #[doc(hidden)]
    pub const fn of<P: ?Sized + Protocol>(
        path: &'static str,
        method: &'static str,
        output: &'static str,
        source: Source,
    ) -> Self {
        ProtocolEntry {
            name: P::NAME,
            path,
            method,
            output,
            source,
            type_id: P::type_id,
        }
    }
}

/// Implemented by `#[protocol]` for `dyn Trait`, for every event that
/// implements the trait: how dispatch calls the protocol's method.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an eventbus protocol",
    label = "not declared with `#[eventbus::protocol]`",
    note = "`#[eventbus::register]` registers impls of protocol traits such as `eventbus::Trackable`, or of your own traits declared with `#[eventbus::protocol]`"
)]
pub trait Dispatcher<E>: Protocol {
    #[doc(hidden)]
    fn call(event: &E) -> Self::Output;
}

/// Implemented by `#[register]`: the proof that an impl was registered, which
/// each protocol requires of its implementors through a hidden supertrait.
pub trait Registration<P: ?Sized> {}

/// One `#[register]` impl.
#[derive(Debug)]
pub struct ImplEntry {
    pub(crate) protocol: fn() -> TypeId,
    pub(crate) protocol_name: &'static str,
    pub(crate) event: fn() -> TypeId,
    pub(crate) source: Source,
    /// Downcasts the event, calls the protocol and writes the payload into an
    /// `Option<P::Output>` passed as `&mut dyn Any`, so one entry type serves
    /// every protocol.
    call: fn(&dyn Any, &mut dyn Any),
    /// Calls the protocol and drops the payload: for `testing::exercise`.
    probe: fn(&dyn Any) -> bool,
}

impl ImplEntry {
    #[doc(hidden)]
    pub const fn of<P: ?Sized + Dispatcher<E>, E: Event>(source: Source) -> Self {
        ImplEntry {
            protocol: P::type_id,
            protocol_name: P::NAME,
            event: TypeId::of::<E>,
            source,
            call: call::<P, E>,
            probe: probe::<P, E>,
        }
    }

    pub(crate) fn call(&self, event: &dyn Any, out: &mut dyn Any) {
        (self.call)(event, out);
    }

    pub(crate) fn probe(&self, event: &dyn Any) -> bool {
        (self.probe)(event)
    }
}

fn call<P: ?Sized + Dispatcher<E>, E: Event>(event: &dyn Any, out: &mut dyn Any) {
    if let (Some(event), Some(out)) = (
        event.downcast_ref::<E>(),
        out.downcast_mut::<Option<P::Output>>(),
    ) {
        *out = Some(P::call(event));
    }
}

fn probe<P: ?Sized + Dispatcher<E>, E: Event>(event: &dyn Any) -> bool {
    match event.downcast_ref::<E>() {
        Some(event) => {
            drop(P::call(event));
            true
        }
        None => false,
    }
}

/// The check `#[event]` runs on each field's type, made to give one error
/// that names the type and the fix, ahead of the errors of the derives.
///
/// A trait with a blanket impl over every needed trait would give one error
/// per missing trait, and `{Self}` would be lost in them. Here the verdict is
/// a type: `<FieldCheck<T>>::VERDICT` resolves to the inherent const, [`Fits`],
/// when `T` has every trait, and otherwise falls back to the const of
/// [`UnfitField`], [`LacksTraits`]. One bound, `EventField<T>`, then fails once.
#[derive(Debug)]
pub struct FieldCheck<T: ?Sized>(PhantomData<T>);

/// The verdict for a field type that has every trait an event field needs.
#[derive(Debug)]
pub struct Fits;

/// The verdict for a field type that lacks one of the traits an event field
/// needs.
#[derive(Debug)]
pub struct LacksTraits;

impl<T> FieldCheck<T>
where
    T: serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Clone
        + Send
        + Sync
        + 'static,
{
    /// Preferred over [`UnfitField::VERDICT`] whenever these bounds hold.
    pub const VERDICT: Fits = Fits;
}

/// The fallback verdict: brought into scope by the generated check.
pub trait UnfitField {
    /// Reached only when the inherent `VERDICT` does not apply.
    const VERDICT: LacksTraits = LacksTraits;
}

impl<T: ?Sized> UnfitField for FieldCheck<T> {}

/// Holds for the verdict of a type that can be a field of an event.
#[diagnostic::on_unimplemented(
    message = "`{T}` cannot be a field of an event",
    label = "this type lacks a trait that every event field needs",
    note = "events are stored and sent as JSON and shared between threads, so `{T}` needs `serde::Serialize`, `serde::Deserialize`, `Debug`, `Clone`, `Send` and `Sync`: derive or implement the missing ones, or use a type that has them",
    note = "a field that need not be stored can be marked `#[serde(skip)]` instead"
)]
pub trait EventField<T: ?Sized> {}

impl<T: ?Sized> EventField<T> for Fits {}

/// Fails to compile, pointing at the field, when a field's type cannot be
/// part of an event: called as
/// `assert_field::<Ty, _>(&<FieldCheck<Ty>>::VERDICT)`.
pub const fn assert_field<T: ?Sized, V: EventField<T>>(verdict: &V) {
    let _ = verdict;
}

inventory::collect!(EventEntry);
inventory::collect!(ProtocolEntry);
inventory::collect!(ImplEntry);

#[cfg(test)]
mod tests {
    use super::Source;

    fn file(file: &'static str, dir: Option<&'static str>) -> String {
        Source::new(file, 1, dir, Some("billing")).portable_file()
    }

    #[test]
    fn a_workspace_file_stays_relative_to_the_workspace() {
        assert_eq!(file("src/events.rs", Some("/repo")), "src/events.rs");
        assert_eq!(
            file("crates\\billing\\src\\lib.rs", None),
            "crates/billing/src/lib.rs"
        );
    }

    #[test]
    #[cfg(unix)]
    fn a_dependency_file_becomes_relative_to_its_crate() {
        let registry =
            "/home/ci/.cargo/registry/src/index.crates.io-6f17d22bba15001f/billing-1.2.0";
        assert_eq!(
            file(
                "/home/ci/.cargo/registry/src/index.crates.io-6f17d22bba15001f/billing-1.2.0/src/lib.rs",
                Some(registry)
            ),
            "billing/src/lib.rs"
        );
        // Without Cargo's variables there is nothing better than the path.
        assert_eq!(file("/elsewhere/src/lib.rs", None), "/elsewhere/src/lib.rs");
        assert_eq!(
            file("/elsewhere/src/lib.rs", Some(registry)),
            "/elsewhere/src/lib.rs"
        );
    }
}
