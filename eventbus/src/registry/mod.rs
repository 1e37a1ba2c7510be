//! The registry: every event compiled into the binary, the protocols it
//! implements, and where each is defined.
//!
//! Nothing is listed by hand. `#[event]`, `#[protocol]` and `#[register]`
//! each submit a static entry through `inventory`, and [`registry()`] gathers
//! them on first use. [`Registry::render`] turns it into a line-oriented text
//! file meant to be committed next to the code: every line names its event,
//! so `grep user.created events.registry` answers "what happens when
//! `user.created` fires?" without reading the code. [`assert_fresh`] keeps
//! that file current from a test; [`assert_fresh_with`] also lists the
//! subscriptions of a bus and, under each event, the ones it reaches.
//!
//! # Examples
//!
//! ```standalone_crate
//! use eventbus::{event, register, Track, Trackable};
//!
//! /// A user signed up.
//! #[event(name = "user.created")]
//! struct UserCreated {
//!     user_id: u64,
//! }
//!
//! #[register]
//! impl Trackable for UserCreated {
//!     fn track(&self) -> Track {
//!         Track::new(self, self.user_id)
//!     }
//! }
//!
//! let registry = eventbus::registry();
//! let info = registry.event("user.created", 1).unwrap();
//! assert_eq!(info.doc(), "A user signed up.");
//! assert_eq!(info.fields()[0].name(), "user_id");
//! assert_eq!(info.protocols()[0].protocol(), "Trackable");
//!
//! let text = registry.render();
//! assert!(text.contains("impl user.created v1 Trackable at="));
//! ```

mod check;
mod entry;
mod error;
mod route;

pub use self::check::{
    BLESS_VAR, assert_fresh, assert_fresh_with, bless, check, check_with, compare,
};
pub use self::entry::FieldInfo;
pub use self::entry::Upcast;
#[doc(hidden)]
pub use self::entry::{
    Dispatcher, EventEntry, EventField, FieldCheck, Fits, ImplEntry, LacksTraits, ProtocolEntry,
    Registration, Source, UnfitField, assert_field,
};
pub use self::error::{CheckError, DuplicateEvent};
pub use self::route::Routes;
pub(crate) use self::route::Wiring;

use crate::event::{AnyEvent, DecodeError};
use std::any::TypeId;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

/// Every event, protocol and protocol impl compiled into this binary.
///
/// Built once, on first use, from what the macros registered.
#[derive(Debug)]
pub struct Registry {
    events: Vec<EventInfo>,
    protocols: Vec<ProtocolInfo>,
    by_name: HashMap<&'static str, Vec<(u32, usize)>>,
    by_type: HashMap<TypeId, usize>,
    impls: HashMap<(TypeId, TypeId), &'static ImplEntry>,
    duplicates: Vec<DuplicateEvent>,
}

/// The registry of this binary. See the [module docs](self).
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::collect)
}

impl Registry {
    fn collect() -> Registry {
        let mut events: Vec<EventInfo> = inventory::iter::<EventEntry>
            .into_iter()
            .map(|entry| EventInfo {
                entry,
                file: portable(&entry.source),
                impls: Vec::new(),
            })
            .collect();
        events.sort_by(|a, b| {
            (a.name(), a.version(), a.type_path(), a.file(), a.line()).cmp(&(
                b.name(),
                b.version(),
                b.type_path(),
                b.file(),
                b.line(),
            ))
        });

        let mut by_name: HashMap<&'static str, Vec<(u32, usize)>> = HashMap::new();
        let mut by_type = HashMap::new();
        let mut duplicates: Vec<DuplicateEvent> = Vec::new();
        for (i, info) in events.iter().enumerate() {
            by_type.insert((info.entry.type_id)(), i);
            let versions = by_name.entry(info.name()).or_default();
            if let Some(&(_, first)) = versions.iter().find(|(v, _)| *v == info.version()) {
                let first: &EventInfo = &events[first];
                match duplicates
                    .iter_mut()
                    .find(|d| d.name == info.name() && d.version == info.version())
                {
                    Some(dup) => dup.locations.push(info.location()),
                    None => duplicates.push(DuplicateEvent {
                        name: info.name().to_owned(),
                        version: info.version(),
                        locations: vec![first.location(), info.location()],
                    }),
                }
            } else {
                versions.push((info.version(), i));
            }
        }

        let mut impls = HashMap::new();
        for entry in inventory::iter::<ImplEntry> {
            let event = (entry.event)();
            impls.insert(((entry.protocol)(), event), entry);
            if let Some(&i) = by_type.get(&event) {
                events[i].impls.push(ProtocolImpl {
                    entry,
                    file: portable(&entry.source),
                });
            }
        }
        for info in &mut events {
            info.impls
                .sort_by_key(|i| (i.protocol(), i.file(), i.line()));
        }

        let mut protocols: Vec<ProtocolInfo> = inventory::iter::<ProtocolEntry>
            .into_iter()
            .map(|entry| ProtocolInfo {
                entry,
                file: portable(&entry.source),
                path: public_path(entry),
            })
            .collect();
        protocols.sort_by(|a, b| (a.name(), a.path()).cmp(&(b.name(), b.path())));

        Registry {
            events,
            protocols,
            by_name,
            by_type,
            impls,
            duplicates,
        }
    }

    /// Every event, sorted by name and version.
    pub fn events(&self) -> &[EventInfo] {
        &self.events
    }

    /// Every protocol, sorted by name.
    pub fn protocols(&self) -> &[ProtocolInfo] {
        &self.protocols
    }

    /// The event registered under `name` at `version`.
    pub fn event(&self, name: &str, version: u32) -> Option<&EventInfo> {
        let versions = self.by_name.get(name)?;
        let &(_, i) = versions.iter().find(|(v, _)| *v == version)?;
        Some(&self.events[i])
    }

    /// The newest version registered under `name`.
    pub fn latest(&self, name: &str) -> Option<&EventInfo> {
        let versions = self.by_name.get(name)?;
        let &(_, i) = versions.iter().max_by_key(|(v, _)| *v)?;
        Some(&self.events[i])
    }

    /// Rebuilds an event from the JSON that
    /// [`AnyEvent::to_json_bytes`] wrote, finding its type by name and
    /// version.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Unknown`] when no event with that name and version is
    /// compiled into this binary (never one at version 0: versions start
    /// at 1), [`DecodeError::Invalid`] when the JSON does not match the
    /// event's fields. An event stored at an older version is read through
    /// the current version's `#[event(upcast = ...)]`;
    /// [`DecodeError::NoUpcast`] when there is none,
    /// [`DecodeError::Upcast`] when it fails.
    pub fn decode(&self, name: &str, version: u32, json: &[u8]) -> Result<AnyEvent, DecodeError> {
        if let Some(info) = self.event(name, version) {
            return info.decode(json);
        }
        match self.latest(name) {
            // Versions start at 1, so nothing upcasts from 0: it is unknown,
            // and `NoUpcast` would ask for an upcast no event can declare.
            Some(info) if info.version() > version && version >= 1 => {
                info.decode_upcast(version, json)
            }
            _ => Err(DecodeError::Unknown {
                name: name.to_owned(),
                version,
            }),
        }
    }

    /// The event whose Rust type is `type_id`.
    pub fn event_of_type(&self, type_id: TypeId) -> Option<&EventInfo> {
        self.by_type.get(&type_id).map(|&i| &self.events[i])
    }

    /// Two event types registered under one name and version: an error that
    /// [`check`] and [`assert_fresh`] report, because stored events could no
    /// longer be read back unambiguously.
    ///
    /// # Errors
    ///
    /// [`DuplicateEvent`] naming the first clash and every `file:line` in it.
    pub fn validate(&self) -> Result<(), DuplicateEvent> {
        match self.duplicates.first() {
            Some(dup) => Err(dup.clone()),
            None => Ok(()),
        }
    }

    pub(crate) fn impl_of(&self, protocol: TypeId, event: TypeId) -> Option<&'static ImplEntry> {
        self.impls.get(&(protocol, event)).copied()
    }

    /// The registry as committed text: a header, one line per protocol, then
    /// per event one `event` line, one `field` line per field and one `impl`
    /// line per protocol it implements. Every event line carries the event's
    /// name, so grepping a name shows everything about it.
    ///
    /// Protocol definitions carry no file location, since a protocol from a
    /// dependency lives at a path that differs from machine to machine.
    pub fn render(&self) -> String {
        self.render_routes(&Routes::default())
    }

    /// [`render`](Registry::render), plus what `bus` does with each event:
    /// one `subscription` line per running subscription (its name, mode,
    /// filter and consumer), and under each event one `route` line per
    /// subscription it reaches, naming the protocols that let it through:
    ///
    /// ```text
    /// subscription analytics mode=sequential protocols=Trackable consumer=ProtocolConsumer<Trackable>
    /// route user.created v1 -> analytics via Trackable consumer=ProtocolConsumer<Trackable>
    /// ```
    ///
    /// [`assert_fresh_with`] keeps a committed file of it current.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = eventbus::Bus::builder().build()?;
    /// bus.subscribe("audit", eventbus::testing::Recorder::new())
    ///     .start()
    ///     .await?;
    /// let text = eventbus::registry().render_with(&bus);
    /// assert!(text.contains("\nsubscription audit mode=sequential events=* consumer=Recorder\n"));
    /// # Ok(()) }
    /// ```
    pub fn render_with(&self, routes: impl Into<Routes>) -> String {
        self.render_routes(&routes.into())
    }

    fn render_routes(&self, routes: &Routes) -> String {
        let mut out = String::new();
        out.push_str(if routes.is_empty() {
            "# eventbus registry: every event in this binary and the protocols it implements.\n"
        } else {
            "# eventbus registry: every event in this binary, the protocols it implements\n\
             # and the subscriptions it reaches.\n"
        });
        out.push_str(
            "# Every line about an event names it: `grep user.created` shows what happens when it fires.\n\
             # Generated; rewrite it with EVENTBUS_BLESS=1 and commit the change.\n",
        );
        for p in &self.protocols {
            let _ = writeln!(
                out,
                "protocol {} fn={} output={} path={}",
                p.name(),
                p.method(),
                p.output(),
                p.path()
            );
        }
        routes.render_subscriptions(&mut out);
        for e in &self.events {
            let (name, version) = (e.name(), e.version());
            // eventbus's own events are placed by crate only, so a change
            // inside eventbus leaves a service's committed file as it is.
            let location = if e.type_path().starts_with("eventbus::") {
                "eventbus".to_owned()
            } else {
                e.location()
            };
            let _ = write!(
                out,
                "event {name} v{version} type={} at={location}",
                e.type_path(),
            );
            if e.has_upcast() {
                out.push_str(" upcasts-older-versions");
            }
            if !e.doc().is_empty() {
                let _ = write!(out, " doc={:?}", e.doc());
            }
            out.push('\n');
            for f in e.fields() {
                let _ = writeln!(out, "field {name} v{version} {}: {}", f.name(), f.ty());
            }
            for i in e.protocols() {
                let _ = writeln!(
                    out,
                    "impl {name} v{version} {} at={}:{}",
                    i.protocol(),
                    i.file(),
                    i.line()
                );
            }
            routes.render_routes(e, &mut out);
        }
        out
    }
}

/// The file of `source` as the registry shows it. Computed once per entry
/// when the registry is built; the registry lives for the whole process, so
/// the few paths that had to be rewritten are leaked to stay `&'static`.
fn portable(source: &entry::Source) -> &'static str {
    let file = source.portable_file();
    if file == source.file {
        source.file
    } else {
        Box::leak(file.into_boxed_str())
    }
}

/// The path users name a protocol by. The built-in ones are declared in
/// modules of eventbus but named by their re-exports at the crate root
/// (`eventbus::Trackable`), so that moving code inside eventbus does not make
/// every user's committed registry stale. Leaked as in [`portable`].
fn public_path(entry: &ProtocolEntry) -> &'static str {
    // A user's crate cannot be named `eventbus` and depend on it.
    if entry.path.starts_with("eventbus::") {
        Box::leak(format!("eventbus::{}", entry.name).into_boxed_str())
    } else {
        entry.path
    }
}

/// One event type: what [`registry()`] knows about it.
#[derive(Debug)]
pub struct EventInfo {
    entry: &'static EventEntry,
    file: &'static str,
    impls: Vec<ProtocolImpl>,
}

impl EventInfo {
    /// The event's name, such as `user.created`.
    pub fn name(&self) -> &'static str {
        self.entry.name
    }

    /// The event's schema version.
    pub fn version(&self) -> u32 {
        self.entry.version
    }

    /// The Rust path of the type, such as `signup::events::UserCreated`.
    pub fn type_path(&self) -> &'static str {
        self.entry.type_path
    }

    /// The file that defines the type: relative to the workspace root for
    /// a crate of the workspace, and `package/path/in/the/package.rs` for a
    /// dependency outside it, so it reads the same on every checkout.
    pub fn file(&self) -> &'static str {
        self.file
    }

    /// The line of the type's name in [`file`](EventInfo::file).
    pub fn line(&self) -> u32 {
        self.entry.source.line
    }

    /// `file:line`.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line())
    }

    /// The first paragraph of the type's doc comment, on one line.
    pub fn doc(&self) -> &'static str {
        self.entry.doc
    }

    /// The fields the user declared, without `meta`.
    pub fn fields(&self) -> &'static [FieldInfo] {
        self.entry.fields
    }

    /// The protocols the event implements, sorted by name.
    pub fn protocols(&self) -> &[ProtocolImpl] {
        &self.impls
    }

    /// The [`TypeId`] of the event type.
    pub fn type_id(&self) -> TypeId {
        (self.entry.type_id)()
    }

    /// Rebuilds the event from JSON written by
    /// [`AnyEvent::to_json_bytes`].
    ///
    /// # Errors
    ///
    /// [`DecodeError::Invalid`] when the JSON does not fit the fields.
    pub fn decode(&self, json: &[u8]) -> Result<AnyEvent, DecodeError> {
        self.entry.decode(json)
    }

    /// Whether the event has an `upcast` for older versions.
    pub fn has_upcast(&self) -> bool {
        self.entry.upcast.is_some()
    }

    /// Reads JSON stored at an older `version` through the event's upcast,
    /// then stamps the current version into its metadata.
    pub(crate) fn decode_upcast(&self, stored: u32, json: &[u8]) -> Result<AnyEvent, DecodeError> {
        let entry = self.entry;
        let invalid = |source| DecodeError::Invalid {
            name: entry.name.to_owned(),
            version: stored,
            source,
        };
        let Some(upcast) = entry.upcast else {
            return Err(DecodeError::NoUpcast {
                name: entry.name.to_owned(),
                stored,
                current: entry.version,
            });
        };
        let value: serde_json::Value = serde_json::from_slice(json).map_err(invalid)?;
        let mut value = upcast(stored, value).map_err(|source| DecodeError::Upcast {
            name: entry.name.to_owned(),
            stored,
            current: entry.version,
            source,
        })?;
        if let Some(meta) = value.get_mut("meta").and_then(|m| m.as_object_mut()) {
            meta.insert("version".into(), entry.version.into());
        }
        (entry.decode_value)(value).map_err(|source| DecodeError::Invalid {
            name: entry.name.to_owned(),
            version: entry.version,
            source,
        })
    }
}

impl FieldInfo {
    /// The field's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The field's type, as written in the source.
    pub fn ty(&self) -> &'static str {
        self.ty
    }
}

/// One protocol trait: what [`registry()`] knows about it.
#[derive(Debug)]
pub struct ProtocolInfo {
    entry: &'static ProtocolEntry,
    file: &'static str,
    path: &'static str,
}

impl ProtocolInfo {
    /// The trait's name, such as `Trackable`.
    pub fn name(&self) -> &'static str {
        self.entry.name
    }

    /// The trait's Rust path: for a built-in protocol the one users write,
    /// such as `eventbus::Trackable`, and not the module it is declared in.
    pub fn path(&self) -> &'static str {
        self.path
    }

    /// The name of the protocol's method, such as `track`.
    pub fn method(&self) -> &'static str {
        self.entry.method
    }

    /// The payload type, as written in the source.
    pub fn output(&self) -> &'static str {
        self.entry.output
    }

    /// `file:line` of the trait's name, with the file named as in
    /// [`EventInfo::file`].
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.entry.source.line)
    }

    /// The [`TypeId`] of `dyn Protocol`.
    pub fn type_id(&self) -> TypeId {
        (self.entry.type_id)()
    }
}

/// One registered impl of a protocol for an event.
#[derive(Debug, Clone, Copy)]
pub struct ProtocolImpl {
    entry: &'static ImplEntry,
    file: &'static str,
}

impl ProtocolImpl {
    /// The protocol's name, such as `Trackable`.
    pub fn protocol(&self) -> &'static str {
        self.entry.protocol_name
    }

    /// The file holding the impl, named as in [`EventInfo::file`].
    pub fn file(&self) -> &'static str {
        self.file
    }

    /// The line of the impl's trait name.
    pub fn line(&self) -> u32 {
        self.entry.source.line
    }

    pub(crate) fn entry(&self) -> &'static ImplEntry {
        self.entry
    }
}
