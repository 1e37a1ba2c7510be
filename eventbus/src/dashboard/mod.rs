//! A web dashboard to mount in your service: the subscriptions with their
//! live numbers, pause and resume; the dead letters, to read, retry or
//! discard; and the map of which side effects each event reaches. Behind
//! the `dashboard` feature.
//!
//! It is an axum [`Router`](axum::Router) that reads the running bus: no
//! second process, and no external assets (its CSS and script are inline).
//! Live numbers come from [`Bus::stats`] over server-sent events, once a
//! second, and stop while the tab is hidden; lists are paged, and nothing
//! counts a whole table on a timer.
//!
//! Actions are forms posted with a token only the dashboard's own pages
//! carry, and refused when the browser says the request comes from another
//! site, so another site cannot make an operator's browser act. Put your
//! service's authentication in front with
//! [`authorize`](Dashboard::authorize), or with your own axum layers;
//! [`read_only`](Dashboard::read_only) shows everything and changes nothing.
//!
//! # Examples
//!
//! ```
//! # fn run(bus: eventbus::Bus) {
//! use eventbus::dashboard::Dashboard;
//!
//! let ops = Dashboard::new(bus.clone())
//!     .authorize(|request| {
//!         request.headers.get("x-operator").is_some() // your own check here
//!     })
//!     .router();
//! // Your service's routes, served as they are now (`axum::serve`).
//! let app: axum::Router = axum::Router::new().nest("/ops/events", ops);
//! # let _ = app;
//! # }
//! ```

mod assets;
mod pages;

use crate::bus::Bus;
use axum::http::request::Parts;
use std::fmt;
use std::sync::Arc;

/// Decides whether a request may see the dashboard.
type Authorize = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

/// The dashboard of one bus: build it, then mount its
/// [`router`](Dashboard::router).
#[derive(Clone)]
pub struct Dashboard {
    bus: Bus,
    read_only: bool,
    authorize: Option<Authorize>,
    /// Carried by every form of the dashboard's pages, and required by
    /// every action.
    token: Arc<str>,
}

impl fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dashboard")
            .field("read_only", &self.read_only)
            .field("authorize", &self.authorize.is_some())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A dashboard of `bus`, allowing every request and every action: put
    /// it behind your authentication.
    pub fn new(bus: Bus) -> Self {
        Dashboard {
            bus,
            read_only: false,
            authorize: None,
            token: uuid::Uuid::new_v4().simple().to_string().into(),
        }
    }

    /// Shows everything and changes nothing: no pause, resume, retry or
    /// discard.
    #[must_use]
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Lets a request in only when `check` says so (a session cookie, a
    /// header your proxy sets); others get `403 Forbidden`.
    #[must_use]
    pub fn authorize(mut self, check: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.authorize = Some(Arc::new(check));
        self
    }

    /// The routes, to [`nest`](axum::Router::nest) under a path of your
    /// service's: nested at `/ops`, the first page is `/ops` (axum's
    /// nesting does not answer `/ops/`), and every link on the pages is
    /// relative to it.
    pub fn router(self) -> axum::Router {
        pages::router(self)
    }
}
