//! The dashboard's routes and pages.

use super::Dashboard;
use super::assets::{LIVE, SELECT_ALL, STYLE};
use crate::dead_letter::{DeadLetter, DeadLetterQuery};
use crate::registry::Routes;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

type Shared = Arc<Dashboard>;

/// Dead letters shown per page.
const PAGE: usize = 50;

/// The most letters one page request reads to find a page of matches.
const SCAN: usize = 5_000;

/// The most letters one "retry all" or "discard all" acts on: the rest
/// stay for the next click, so one request never holds or replays an
/// unbounded number.
const BULK: usize = 1_000;

pub(super) fn router(dashboard: Dashboard) -> axum::Router {
    let state: Shared = Arc::new(dashboard);
    axum::Router::new()
        .route("/", get(subscriptions))
        .route("/stream", get(stream))
        .route("/subscriptions/{name}/{action}", post(subscription_action))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/act", post(act_on_letters))
        .route("/dead-letters/{id}", get(dead_letter))
        .route("/map", get(map))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), gate))
        .with_state(state)
}

/// Lets a request through only if the service's check allows it.
/// Every response may not be framed by another page (which would let a
/// page of another site click its buttons with the operator's rights) nor
/// be cached.
async fn gate(State(dashboard): State<Shared>, request: Request, next: Next) -> Response {
    let mut response = match &dashboard.authorize {
        Some(check) => {
            let (parts, body) = request.into_parts();
            if check(&parts) {
                next.run(Request::from_parts(parts, body)).await
            } else {
                (StatusCode::FORBIDDEN, "forbidden").into_response()
            }
        }
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// Where the dashboard is mounted, with a final `/`, from the full path a
/// request came with and the part of it that is the dashboard's own: every
/// link on its pages is relative to it.
fn base(original: &Uri, uri: &Uri) -> String {
    let (full, own) = (original.path(), uri.path());
    let prefix = if own == "/" {
        full.trim_end_matches('/')
    } else {
        full.strip_suffix(own).unwrap_or("")
    };
    // One leading slash, whatever the mount's parameters matched: `//x`
    // would make every link, form and the stream go to host `x`.
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        "/".to_owned()
    } else {
        format!("/{prefix}/")
    }
}

/// The pairs of a query string or form body.
fn pairs(text: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(text).into_owned().collect()
}

/// The first page's own address: the mount path itself, which axum's
/// nesting answers (it does not answer the path with a final `/`).
fn home(base: &str) -> &str {
    match base.trim_end_matches('/') {
        "" => "/",
        home => home,
    }
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// A page of the dashboard.
fn page(
    dashboard: &Dashboard,
    base: &str,
    here: &str,
    notice: Option<&str>,
    body: Markup,
) -> Html<String> {
    let nav = [
        ("", "Subscriptions"),
        ("dead-letters", "Dead letters"),
        ("map", "Side effects"),
    ];
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    base href=(base);
                    title { "eventbus · " (here) }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    header {
                        strong { "eventbus" }
                        @for (href, label) in nav {
                            a.here[label == here] href=(if href.is_empty() { home(base) } else { href }) { (label) }
                        }
                        span.mode { @if dashboard.read_only { "read-only" } }
                    }
                    main {
                        @if let Some(notice) = notice {
                            p.notice { (notice) }
                        }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

/// A form's hidden token field.
fn token(dashboard: &Dashboard) -> Markup {
    html! { @if !dashboard.read_only { input type="hidden" name="token" value=(dashboard.token); } }
}

async fn subscriptions(
    State(dashboard): State<Shared>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
) -> Html<String> {
    let base = base(&original, &uri);
    let query = pairs(uri.query().unwrap_or("").as_bytes());
    let routes = Routes::from(&dashboard.bus);
    let stats = dashboard.bus.stats();
    let body = html! {
        table #subscriptions {
            thead { tr {
                th { "Subscription" } th { "Mode" } th { "Filter" } th { "State" }
                th { "Lag" } th { "In flight" } th { "Delivered" } th { "Per second" }
                th { "Failed" } th { "Retried" } th { "Dead-lettered" } th { "Delivered per second, last minute" } th {}
            } }
            tbody {
                @for s in &stats {
                    @let wiring = routes.wirings().iter().find(|w| w.name == s.name);
                    tr data-row=(s.name) .paused[s.paused] {
                        td { strong { (s.name) } @if let Some(stalled) = &s.stalled { br; span.stalled { "stalled: " (stalled) } } }
                        td { @if let Some(w) = wiring { (w.mode) } }
                        td.muted { @if let Some(w) = wiring {
                            (w.patterns.join(", "))
                            @if !w.protocols.is_empty() { " " (w.protocols.join(", ")) }
                        } }
                        td data-sub=(s.name) data-field="paused" { (if s.paused { "paused" } else { "running" }) }
                        td.num data-sub=(s.name) data-field="lag" { (s.lag) }
                        td.num data-sub=(s.name) data-field="in_flight" { (s.in_flight) }
                        td.num data-sub=(s.name) data-field="delivered" { (s.delivered) }
                        td.num data-sub=(s.name) data-field="rate" { "–" }
                        td.num data-sub=(s.name) data-field="failed" { (s.failed) }
                        td.num data-sub=(s.name) data-field="retried" { (s.retried) }
                        td.num data-sub=(s.name) data-field="dead_lettered" {
                            a href={ "dead-letters?subscription=" (encode(&s.name)) } { (s.dead_lettered) }
                        }
                        td { svg.chart data-chart=(s.name) viewBox="0 0 120 24" { polyline points="" {} } }
                        td { @if !dashboard.read_only {
                            @let action = if s.paused { "resume" } else { "pause" };
                            form.inline method="post" action={ "subscriptions/" (encode(&s.name)) "/" (action) } {
                                (token(&dashboard))
                                button type="submit" data-action=(action) data-for=(s.name) { (if s.paused { "Resume" } else { "Pause" }) }
                            }
                        } }
                    }
                }
            }
        }
        @if stats.is_empty() { p.muted { "No subscription is running." } }
        script { (PreEscaped(LIVE)) }
    };
    page(
        &dashboard,
        &base,
        "Subscriptions",
        param(&query, "notice"),
        body,
    )
}

/// Stats once a second, as `stats` events.
async fn stream(
    State(dashboard): State<Shared>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let ticks = futures_util::stream::unfold(
        (dashboard, tokio::time::interval(Duration::from_secs(1))),
        |(dashboard, mut interval)| async move {
            interval.tick().await;
            let stats: Vec<serde_json::Value> = dashboard
                .bus
                .stats()
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "name": s.name,
                        "lag": s.lag,
                        "in_flight": s.in_flight,
                        "delivered": s.delivered,
                        "failed": s.failed,
                        "retried": s.retried,
                        "dead_lettered": s.dead_lettered,
                        "paused": s.paused,
                    })
                })
                .collect();
            let event = Event::default()
                .event("stats")
                .data(serde_json::Value::Array(stats).to_string());
            Some((Ok(event), (dashboard, interval)))
        },
    );
    Sse::new(ticks).keep_alive(KeepAlive::default())
}

/// Why an action is refused, if it is: a read-only dashboard, a form
/// without the pages' token, or a request the browser says another site
/// made.
fn refuse(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Option<Response> {
    if dashboard.read_only {
        return Some((StatusCode::FORBIDDEN, "this dashboard is read-only").into_response());
    }
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site");
    if cross_site || param(form, "token") != Some(&*dashboard.token) {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "refused: actions are taken from the dashboard's own pages",
            )
                .into_response(),
        );
    }
    None
}

/// The parameters of an action's path, by name: a mount path with
/// parameters of its own (`/{tenant}/ops`) adds to them.
#[derive(serde::Deserialize)]
struct ActionPath {
    name: String,
    action: String,
}

#[derive(serde::Deserialize)]
struct LetterPath {
    id: u64,
}

async fn subscription_action(
    State(dashboard): State<Shared>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    Path(ActionPath { name, action }): Path<ActionPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = pairs(&body);
    if let Some(refused) = refuse(&dashboard, &headers, &form) {
        return refused;
    }
    let done = match action.as_str() {
        "pause" => dashboard.bus.pause(&name),
        "resume" => dashboard.bus.resume(&name),
        _ => return (StatusCode::NOT_FOUND, "no such action").into_response(),
    };
    let notice = match done {
        Some(_) => format!("{name}: {action}d"),
        None => format!("{name}: no such subscription"),
    };
    let root = base(&original, &uri);
    Redirect::to(&format!("{}?notice={}", home(&root), encode(&notice))).into_response()
}

/// The dead-letter filter of a query or form.
#[derive(Clone)]
struct LetterFilter {
    subscription: Option<String>,
    name: Option<String>,
    error: Option<String>,
    /// Only letters up to this id: what a confirmation counted.
    upto: Option<u64>,
}

impl LetterFilter {
    fn of(pairs: &[(String, String)]) -> Self {
        LetterFilter {
            subscription: param(pairs, "subscription").map(str::to_owned),
            name: param(pairs, "name").map(str::to_owned),
            error: param(pairs, "error").map(str::to_lowercase),
            upto: None,
        }
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        let name_ok = self
            .name
            .as_deref()
            .is_none_or(|wanted| match wanted.strip_suffix('*') {
                Some(prefix) => letter.event.name().starts_with(prefix),
                None => letter.event.name() == wanted,
            });
        let error_ok = self.error.as_deref().is_none_or(|text| {
            letter
                .errors
                .iter()
                .any(|e| e.to_lowercase().contains(text))
        });
        name_ok && error_ok
    }

    fn query(&self) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("subscription", &self.subscription),
            ("name", &self.name),
            ("error", &self.error),
        ] {
            if let Some(value) = value {
                out.append_pair(key, value);
            }
        }
        out.finish()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.subscription {
            parts.push(format!("subscription {s}"));
        }
        if let Some(n) = &self.name {
            parts.push(format!("event {n}"));
        }
        if let Some(e) = &self.error {
            parts.push(format!("error containing {e:?}"));
        }
        if parts.is_empty() {
            "every dead letter".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// Letters matching `filter` with ids above `after`: up to `want` of them,
/// reading at most `scan` letters; and the id to go on from, if any are
/// left.
async fn matching(
    dashboard: &Dashboard,
    filter: &LetterFilter,
    mut after: u64,
    want: usize,
    scan: usize,
) -> Result<(Vec<DeadLetter>, Option<u64>), crate::backend::StoreError> {
    let mut found = Vec::new();
    let mut read = 0;
    loop {
        let mut query = DeadLetterQuery::new().after(after).limit(200);
        if let Some(s) = &filter.subscription {
            query = query.subscription(s.clone());
        }
        let page = dashboard.bus.dead_letters().page(&query).await?;
        for letter in page.letters {
            if filter.upto.is_some_and(|upto| letter.id > upto) {
                return Ok((found, None));
            }
            read += 1;
            after = letter.id;
            if filter.matches(&letter) {
                found.push(letter);
                if found.len() == want {
                    return Ok((found, Some(after)));
                }
            }
        }
        match page.next {
            Some(_) if read < scan => {}
            Some(_) => return Ok((found, Some(after))),
            None => return Ok((found, None)),
        }
    }
}

async fn dead_letters(
    State(dashboard): State<Shared>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
) -> Response {
    let base = base(&original, &uri);
    let query = pairs(uri.query().unwrap_or("").as_bytes());
    let filter = LetterFilter::of(&query);
    let after = param(&query, "after")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let (letters, next) = match matching(&dashboard, &filter, after, PAGE, SCAN).await {
        Ok(found) => found,
        Err(err) => return store_failed(&err),
    };
    let subscriptions: Vec<String> = dashboard.bus.stats().into_iter().map(|s| s.name).collect();
    let body = html! {
        form.filters method="get" action="dead-letters" {
            label { "Subscription"
                select name="subscription" {
                    option value="" { "any" }
                    @for s in &subscriptions {
                        option value=(s) selected[filter.subscription.as_deref() == Some(s.as_str())] { (s) }
                    }
                }
            }
            label { "Event" input type="text" name="name" placeholder="user.created or user.*" value=[filter.name.as_deref()]; }
            label { "Error contains" input type="search" name="error" value=[filter.error.as_deref()]; }
            button type="submit" { "Filter" }
        }
        form method="post" action="dead-letters/act" {
            (token(&dashboard))
            input type="hidden" name="subscription" value=[filter.subscription.as_deref()];
            input type="hidden" name="name" value=[filter.name.as_deref()];
            input type="hidden" name="error" value=[filter.error.as_deref()];
            table #letters {
                thead { tr {
                    th { @if !dashboard.read_only { input #select-all type="checkbox" title="Select the page"; } }
                    th { "Id" } th { "Subscription" } th { "Event" } th { "Error" } th { "Attempts" } th { "Last failed" } th { "State" }
                } }
                tbody {
                    @for letter in &letters {
                        tr data-letter=(letter.id) {
                            td { @if !dashboard.read_only { input type="checkbox" name="id" value=(letter.id); } }
                            td { a href={ "dead-letters/" (letter.id) } { (letter.id) } }
                            td { (letter.subscription) }
                            td { (letter.event.name()) }
                            td.error { (letter.errors.first().map(String::as_str).unwrap_or("")) }
                            td.num { (letter.attempts) }
                            td { (letter.last_failed_at.format("%Y-%m-%d %H:%M:%S")) }
                            td { (if letter.replaying { "replaying" } else { "" }) }
                        }
                    }
                }
            }
            @if letters.is_empty() { p.muted { "No dead letter matches." } }
            @if !dashboard.read_only && !letters.is_empty() {
                p {
                    button type="submit" name="action" value="retry" { "Retry selected" } " "
                    button.danger type="submit" name="action" value="discard" { "Discard selected" } " "
                    button type="submit" name="action" value="retry-all" { "Retry all matching…" } " "
                    button.danger type="submit" name="action" value="discard-all" { "Discard all matching…" }
                }
            }
        }
        @if let Some(next) = next {
            p {
                @if letters.is_empty() { span.muted { "No match among the letters read so far. " } }
                a #next href={ "dead-letters?" (and(&filter.query())) "after=" (next) } {
                    (if letters.is_empty() { "Read on →" } else { "Next page →" })
                }
            }
        }
        script { (PreEscaped(SELECT_ALL)) }
    };
    page(
        &dashboard,
        &base,
        "Dead letters",
        param(&query, "notice"),
        body,
    )
    .into_response()
}

fn store_failed(err: &crate::backend::StoreError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the dead-letter store failed: {}",
            crate::failure::error_chain(err).join(": ")
        ),
    )
        .into_response()
}

async fn dead_letter(
    State(dashboard): State<Shared>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    Path(LetterPath { id }): Path<LetterPath>,
) -> Response {
    let base = base(&original, &uri);
    let letter = match dashboard.bus.dead_letters().get(id).await {
        Ok(Some(letter)) => letter,
        Ok(None) => {
            return (StatusCode::NOT_FOUND, format!("no dead letter has id {id}")).into_response();
        }
        Err(err) => return store_failed(&err),
    };
    let payload = letter
        .event
        .to_json()
        .map(|json| serde_json::to_string_pretty(&json).unwrap_or_default())
        .unwrap_or_else(|err| format!("(does not encode: {err})"));
    let meta = letter.event.meta();
    let body = html! {
        h2 { "Dead letter " (letter.id) }
        table {
            tr { th { "Subscription" } td { (letter.subscription) } }
            tr { th { "Event" } td { (letter.event.name()) " v" (letter.event.version()) } }
            tr { th { "Event id" } td { (meta.id) } }
            tr { th { "Occurred" } td { (meta.occurred_at.to_rfc3339()) } }
            tr { th { "Attempts" } td { (letter.attempts) } }
            tr { th { "First failed" } td { (letter.first_failed_at.to_rfc3339()) } }
            tr { th { "Last failed" } td { (letter.last_failed_at.to_rfc3339()) } }
            tr { th { "State" } td { (if letter.replaying { "replaying" } else { "waiting" }) } }
        }
        h3 { "Error" }
        ol.error { @for e in &letter.errors { li { (e) } } }
        h3 { "Payload" }
        pre { (payload) }
        @if !dashboard.read_only {
            form method="post" action="dead-letters/act" {
                (token(&dashboard))
                input type="hidden" name="id" value=(letter.id);
                button type="submit" name="action" value="retry" { "Retry" } " "
                button.danger type="submit" name="action" value="discard" { "Discard" }
            }
        }
    };
    page(&dashboard, &base, "Dead letters", None, body).into_response()
}

async fn act_on_letters(
    State(dashboard): State<Shared>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = pairs(&body);
    if let Some(refused) = refuse(&dashboard, &headers, &form) {
        return refused;
    }
    let root = &base(&original, &uri);
    let filter = LetterFilter::of(&form);
    let action = param(&form, "action").unwrap_or("");
    let back = |notice: String| {
        Redirect::to(&format!(
            "{root}dead-letters?{}notice={}",
            and(&filter.query()),
            encode(&notice)
        ))
        .into_response()
    };
    let ids: Vec<u64> = match action {
        "retry" | "discard" => form
            .iter()
            .filter(|(k, _)| k == "id")
            .filter_map(|(_, v)| v.parse().ok())
            .collect(),
        "retry-all" | "discard-all" => {
            if param(&form, "confirm") != Some("yes") {
                // Count what the filter matches, up to what one request
                // acts on, and ask.
                // One more than is acted on, to know whether more match.
                let (mut all, _) =
                    match matching(&dashboard, &filter, 0, BULK + 1, usize::MAX).await {
                        Ok(found) => found,
                        Err(err) => return store_failed(&err),
                    };
                let more = all.len() > BULK;
                all.truncate(BULK);
                let verb = if action == "retry-all" {
                    "Retry"
                } else {
                    "Discard"
                };
                let upto = all.iter().map(|l| l.id).max().unwrap_or(0);
                let body = html! {
                    h2 { (verb) " " (all.len()) " dead letter(s)?" }
                    p { "Matching: " (filter.describe()) "." }
                    @if more {
                        p.notice { "More match: these are the oldest " (BULK) "; the rest stay for another click." }
                    }
                    form #confirm method="post" action="dead-letters/act" {
                        (token(&dashboard))
                        input type="hidden" name="action" value=(action);
                        input type="hidden" name="confirm" value="yes";
                        // What was counted: letters that arrive meanwhile
                        // are left alone.
                        input type="hidden" name="upto" value=(upto);
                        input type="hidden" name="subscription" value=[filter.subscription.as_deref()];
                        input type="hidden" name="name" value=[filter.name.as_deref()];
                        input type="hidden" name="error" value=[filter.error.as_deref()];
                        button type="submit" .danger[action == "discard-all"] { (verb) " " (all.len()) }
                        " "
                        a href={ "dead-letters?" (filter.query()) } { "Cancel" }
                    }
                };
                return page(&dashboard, root, "Dead letters", None, body).into_response();
            }
            let Some(upto) = param(&form, "upto").and_then(|u| u.parse::<u64>().ok()) else {
                return back(
                    "confirm again: the confirmation did not say what it counted".to_owned(),
                );
            };
            // Only what was counted: at most `BULK`, none newer.
            let upto_filter = LetterFilter {
                upto: Some(upto),
                ..filter.clone()
            };
            match matching(&dashboard, &upto_filter, 0, BULK, usize::MAX).await {
                Ok((all, _)) => all.iter().map(|l| l.id).collect(),
                Err(err) => return store_failed(&err),
            }
        }
        _ => return back("choose an action".to_owned()),
    };
    let retry = action.starts_with("retry");
    let (mut done, mut failed) = (0, Vec::new());
    for id in &ids {
        let result = if retry {
            dashboard
                .bus
                .dead_letters()
                .replay(*id)
                .await
                .map_err(|e| e.to_string())
        } else {
            dashboard
                .bus
                .dead_letters()
                .discard(*id)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match result {
            Ok(()) => done += 1,
            Err(err) => failed.push(format!("{id}: {err}")),
        }
    }
    let verb = if retry { "retried" } else { "discarded" };
    let mut notice = format!("{done} dead letter(s) {verb}");
    if action.ends_with("-all") && ids.len() == BULK {
        notice.push_str(&format!("; at most {BULK} at a time, so more may match"));
    }
    if !failed.is_empty() {
        let shown: Vec<&str> = failed.iter().take(3).map(String::as_str).collect();
        notice.push_str(&format!("; {} failed: {}", failed.len(), shown.join("; ")));
        if failed.len() > shown.len() {
            notice.push_str("; …");
        }
    }
    back(notice)
}

async fn map(
    State(dashboard): State<Shared>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
) -> Html<String> {
    let base = base(&original, &uri);
    let query = pairs(uri.query().unwrap_or("").as_bytes());
    let search = param(&query, "q").map(str::to_lowercase);
    let routes = Routes::from(&dashboard.bus);
    let registry = crate::registry::registry();
    let body = html! {
        form.filters method="get" action="map" {
            label { "Search events, protocols, subscriptions"
                input type="search" name="q" value=[search.as_deref()]; }
            button type="submit" { "Search" }
        }
        table #map {
            thead { tr { th { "Event" } th { "Protocols" } th { "Subscriptions it reaches" } } }
            tbody {
                @for event in registry.events() {
                    @let protocols: Vec<&str> = event.protocols().iter().map(|p| p.protocol()).collect();
                    @let reaches: Vec<String> = routes.wirings().iter().filter_map(|w| {
                        let (_, via) = w.reaches.iter().find(|(ty, _)| *ty == event.type_id())?;
                        let mut line = w.name.clone();
                        if !via.is_empty() { line.push_str(&format!(" via {}", via.join(","))); }
                        if let Some(consumer) = &w.consumer { line.push_str(&format!(" → {consumer}")); }
                        Some(line)
                    }).collect();
                    @let text = format!("{} {} {}", event.name(), protocols.join(" "), reaches.join(" ")).to_lowercase();
                    @if search.as_deref().is_none_or(|q| text.contains(q)) {
                        tr data-event=(event.name()) {
                            td { strong { (event.name()) } " v" (event.version()) br; span.muted { (event.doc()) } }
                            td { (protocols.join(", ")) }
                            td { ul { @for r in &reaches { li { (r) } } } }
                        }
                    }
                }
            }
        }
    };
    page(&dashboard, &base, "Side effects", None, body)
}

/// A query with `&` after it, to append to; empty for no query.
fn and(query: &str) -> String {
    if query.is_empty() {
        String::new()
    } else {
        format!("{query}&")
    }
}

/// Percent-encodes a value for a URL.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
