//! The HTTP surface of the mock: routing, authentication, the order of
//! checks of every endpoint, request parsing and the error bodies.
//!
//! Every endpoint checks in the same order, as the real API does:
//! authentication, then request validation (400), then account and
//! permission (404/403/422), then injected transient faults, then the rate
//! limit, then credits (402), then the effect. Writes look up their
//! `Idempotency-Key` between the rate limit and credits, so a replay is never
//! charged. Two middlewares frame it all: `envelope` (request id, latency,
//! status count) around everything and `authenticate` (call count, API key)
//! around the routes.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{
    DefaultBodyLimit, Extension, FromRequest, Multipart, Path, Query, Request, State,
};
use axum::http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::data::{self, Cursor, Thread};
use super::state::{
    Effect, Intent, Replay, Settings, Shared, Transient, WRITE_COST, World, WriteAction,
    request_hash,
};
use super::{Faults, MockMessage, WriteMode};

/// Ledger keys: the route templates without the `/api/v1` prefix.
const USERS: &str = "GET /x/users/{id}";
const HISTORY: &str = "GET /x/dm/{userId}/history";
const MEDIA: &str = "POST /x/media";
const DM: &str = "POST /x/dm/{userId}";
const WRITE_ACTIONS: &str = "GET /x/write-actions/{id}";

/// Uploads may be far larger than axum's 2 MB default body limit.
const MEDIA_BODY_LIMIT: usize = 64 << 20;
/// The DM text limit, in Unicode scalar values.
const TEXT_LIMIT: usize = 10_000;
const DM_FIELDS: [&str; 3] = ["account", "text", "media_ids"];
const MEDIA_JSON_FIELDS: [&str; 2] = ["account", "url"];
const MEDIA_FORM_FIELDS: [&str; 3] = ["account", "file", "is_long_video"];

/// Per-request facts the middlewares hand to the handlers.
#[derive(Debug, Clone)]
struct Ctx {
    /// The request's number in arrival order (the request log's).
    number: u64,
    request_id: String,
    /// Errors as `{"error": {code, message, type}}`.
    structured: bool,
    /// The presented API key, which is also the rate-limit bucket of
    /// requests that name no account.
    key: Option<String>,
}

/// Builds the application.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let guard = |endpoint: &'static str, route: MethodRouter<Arc<Shared>>| {
        route.route_layer(middleware::from_fn_with_state(
            (Arc::clone(&shared), endpoint),
            authenticate,
        ))
    };
    Router::new()
        .route("/api/v1/x/users/{id}", guard(USERS, get(users)))
        .route(
            "/api/v1/x/dm/{userId}/history",
            guard(HISTORY, get(history)),
        )
        .route("/api/v1/x/dm/{userId}", guard(DM, post(send_dm)))
        .route(
            "/api/v1/x/media",
            guard(MEDIA, post(upload_media)).layer(DefaultBodyLimit::max(MEDIA_BODY_LIMIT)),
        )
        .route(
            "/api/v1/x/write-actions/{id}",
            guard(WRITE_ACTIONS, get(write_action)),
        )
        // Outside the API's paths: what the mock counted, for black-box
        // tests and the benchmark, which run the mock as a separate process.
        .route("/__mock/ledger", get(ledger))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            envelope,
        ))
        .with_state(shared)
}

/// Names the request, applies the latency fault, stamps `X-Request-Id` on
/// every response and counts it by status.
async fn envelope(State(shared): State<Arc<Shared>>, mut request: Request, next: Next) -> Response {
    let (number, id, latency) = {
        let mut world = shared.world();
        let (number, id) = world.next_request();
        (number, id, world.latency())
    };
    let request_id = format!("req_{id:016x}");
    let headers = request.headers();
    let ctx = Ctx {
        number,
        request_id: request_id.clone(),
        structured: shared.settings.structured_errors || headers.contains_key("xquik-api-contract"),
        key: presented_key(headers),
    };
    request.extensions_mut().insert(ctx);
    let mut response = next.run(request).await;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let mut world = shared.world();
    world.count_status(response.status().as_u16());
    world.answered(number, response.status().as_u16());
    drop(world);
    response
}

/// Counts the call against its route (`endpoint`), then checks the API key.
async fn authenticate(
    State((shared, endpoint)): State<(Arc<Shared>, &'static str)>,
    Extension(ctx): Extension<Ctx>,
    request: Request,
    next: Next,
) -> Response {
    shared.world().count_call(endpoint);
    if !shared.settings.key_accepted(ctx.key.as_deref()) {
        return ApiError::unauthenticated().render(&ctx);
    }
    next.run(request).await
}

/// The key from `x-api-key`, its alias `Xquik-Api-Key`, or a bearer token.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("x-api-key")
        .or_else(|| header("xquik-api-key"))
        .or_else(|| header("authorization").and_then(|v| v.strip_prefix("Bearer ")))
        .map(|key| key.trim().to_owned())
}

/// `GET /__mock/ledger`: the credits ledger as JSON.
async fn ledger(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.world().ledger.clone()).into_response()
}

async fn unknown_route(Extension(ctx): Extension<Ctx>) -> Response {
    ApiError::not_found().render(&ctx)
}

async fn users(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    lookup_user(&shared, &ctx, &id).unwrap_or_else(|e| e.render(&ctx))
}

fn lookup_user(shared: &Shared, ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    if !is_numeric_id(id) && !is_username(id) {
        return Err(ApiError::invalid_user_id());
    }
    let user = shared
        .settings
        .user(id)
        .ok_or_else(ApiError::user_not_found)?;
    {
        let mut world = shared.world();
        admit_key_read(&mut world, &shared.settings, ctx)?;
        world
            .charge(USERS, 1)
            .map_err(|balance| ApiError::insufficient_credits(balance, 1))?;
    }
    Ok(Json(data::profile(user, shared.settings.seed)).into_response())
}

async fn history(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(user_id): Path<String>,
    uri: Uri,
) -> Response {
    read_history(&shared, &ctx, &user_id, &uri).unwrap_or_else(|e| e.render(&ctx))
}

/// The wire shape of a history page.
#[derive(Serialize)]
struct Page<'a> {
    messages: &'a [MockMessage],
    has_next_page: bool,
    next_cursor: &'a str,
}

fn read_history(
    shared: &Shared,
    ctx: &Ctx,
    user_id: &str,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let Query(query) = Query::<HashMap<String, String>>::try_from_uri(uri)
        .map_err(|_| ApiError::invalid_input("The query string is malformed."))?;
    if !is_numeric_id(user_id) {
        return Err(ApiError::invalid_user_id());
    }
    let account = query
        .get("account")
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .ok_or_else(ApiError::account_required)?;
    let cursor = query.get("cursor").filter(|c| !c.is_empty());
    let max_id = match query.get("maxId").filter(|m| !m.is_empty()) {
        Some(max_id) => Some(
            max_id
                .parse::<u64>()
                .map_err(|_| ApiError::invalid_input("maxId must be a numeric message ID."))?,
        ),
        None => None,
    };
    let settings = &shared.settings;
    let account = settings
        .account(account)
        .ok_or_else(ApiError::account_not_found)?;
    let mut world = shared.world();
    let index = world
        .conversation(account, user_id)
        .filter(|_| !settings.is_forbidden(&world.faults, account, user_id))
        .ok_or_else(ApiError::dm_not_permitted)?;
    let (thread, len) = {
        let conversation = &world.conversations[index];
        (Arc::clone(&conversation.thread), conversation.len)
    };
    // A cursor is checked against its conversation, so its 400 can only come
    // after the 403.
    let at = match (cursor, max_id) {
        (Some(cursor), _) => thread.decode_cursor(cursor).ok_or_else(|| {
            ApiError::invalid_input(
                "The cursor is invalid. Pass back next_cursor exactly as it was returned.",
            )
        })?,
        (None, Some(max_id)) => Cursor {
            before: thread.index_of_id(max_id, len),
            page: 2,
        },
        (None, None) => Cursor {
            before: len,
            page: 1,
        },
    };
    admit(
        &mut world,
        settings,
        ctx,
        &settings.accounts[account].handle,
        false,
        false,
    )?;
    let plan = plan_page(&thread, len, at, &world.faults, settings.page_size);
    let count = plan.rows.end - plan.rows.start;
    world
        .charge(HISTORY, count)
        .map_err(|balance| ApiError::insufficient_credits(balance, count))?;
    let slice = world.conversations[index].slice(plan.rows.clone());
    let unordered = world.faults.unordered;
    drop(world);

    let mut messages: Vec<MockMessage> = plan.rows.rev().map(|i| slice.message(i)).collect();
    if unordered {
        thread.shuffle(&mut messages, at);
    }
    let page = Page {
        messages: &messages,
        has_next_page: plan.has_next,
        next_cursor: &plan.next_cursor,
    };
    let body = serde_json::to_vec(&page).map_err(|_| ApiError::internal())?;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// Which messages a page holds and where it points next.
#[derive(Debug, PartialEq, Eq)]
struct PagePlan {
    rows: Range<u64>,
    has_next: bool,
    next_cursor: String,
}

/// Plans the page at `at` of a conversation of `len` messages, faults
/// included. Every page fault depends only on the cursor, so a retried
/// request gets the very same page.
fn plan_page(thread: &Thread, len: u64, at: Cursor, faults: &Faults, page_size: usize) -> PagePlan {
    let size = page_size as u64;
    let before = at.before.min(len);
    let every = faults.empty_page_every.filter(|&n| n > 0);
    let is_empty = |page: u32| every.is_some_and(|n| page.is_multiple_of(n));
    let next_page = at.page.saturating_add(1);
    let mut plan = if before > 0 && is_empty(at.page) {
        PagePlan {
            rows: before..before,
            has_next: true,
            next_cursor: thread.encode_cursor(Cursor {
                before,
                page: next_page,
            }),
        }
    } else {
        let low = before.saturating_sub(size);
        // The overlap re-serves the oldest messages of the previous page,
        // which sit just above `before`.
        let top = if at.page > 1 {
            before
                .saturating_add((faults.overlap as u64).min(size))
                .min(len)
        } else {
            before
        };
        PagePlan {
            rows: low..top,
            has_next: low > 0,
            next_cursor: if low > 0 {
                thread.encode_cursor(Cursor {
                    before: low,
                    page: next_page,
                })
            } else {
                String::new()
            },
        }
    };
    let past = |limit: Option<u32>| limit.is_some_and(|n| at.page > n);
    if past(faults.dangling_cursor_after) {
        plan.has_next = true;
        plan.next_cursor = String::new();
    } else if past(faults.repeated_cursor_after) {
        plan.has_next = true;
        // The cursor that fetched the previous page, rebuilt exactly (the
        // previous page either stood still or moved by one page). The first
        // page had no cursor, so page 2 points at itself instead.
        plan.next_cursor = if at.page >= 3 {
            let page = at.page - 1;
            let before = if is_empty(page) {
                before
            } else {
                before + size
            };
            thread.encode_cursor(Cursor { before, page })
        } else {
            thread.encode_cursor(at)
        };
    }
    plan
}

async fn send_dm(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    deliver_dm(&shared, &ctx, &user_id, &headers, &body).unwrap_or_else(|e| e.render(&ctx))
}

/// A DM request that passed validation.
#[derive(Debug)]
struct DmInput {
    account: String,
    text: String,
    media_id: Option<String>,
}

fn deliver_dm(
    shared: &Shared,
    ctx: &Ctx,
    user_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    if !is_numeric_id(user_id) {
        return Err(ApiError::write_invalid(
            "invalid_user_id",
            "The recipient must be a numeric X user ID. Look usernames up with GET /x/users/{id}.",
            vec![field_error(
                "userId",
                "invalid_format",
                "Expected a numeric user ID.",
            )],
        ));
    }
    let key = idempotency_key(headers)?;
    let input = parse_dm(body)?;
    let settings = &shared.settings;
    let account = settings
        .account(&input.account)
        .ok_or_else(ApiError::account_not_found)?;
    let mut world = shared.world();
    if let Some(media_id) = &input.media_id
        && !world.owns_media(media_id, account)
    {
        return Err(ApiError::write_invalid(
            "invalid_input",
            INVALID_WRITE,
            vec![field_error(
                "media_ids[0]",
                "unknown_media_id",
                "Upload the media with POST /x/media from this account first.",
            )],
        ));
    }
    // X's own verdict on the recipient: it does not depend on timing, so it
    // comes before the faults.
    let known = settings.users.iter().find(|u| u.id == user_id);
    if known.is_some_and(|u| u.can_dm == Some(false)) {
        return Err(ApiError::write_rejected(
            "x_dm_not_allowed",
            "The recipient may not accept DMs from this connected account. Do not retry unchanged; use another permitted account or ask the recipient to allow messages.",
        ));
    }
    if known.is_none() && world.conversation(account, user_id).is_none() {
        return Err(ApiError::write_rejected(
            "x_target_not_found",
            "X could not find the recipient. Check the user ID.",
        ));
    }
    let mut payload = json!({ "text": input.text });
    if let (Some(media_id), Some(map)) = (&input.media_id, payload.as_object_mut()) {
        map.insert("media_ids".to_owned(), json!([media_id]));
    }
    let sender = &settings.accounts[account];
    let hash = request_hash(&sender.user_id, "send_dm", Some(user_id), &payload);
    let lost = admit(&mut world, settings, ctx, &sender.handle, true, true)?;
    let intent = Intent {
        key,
        account,
        action: "send_dm",
        target: Some(user_id.to_owned()),
        payload,
        hash,
    };
    let effect = Effect::Dm {
        recipient: user_id.to_owned(),
        text: input.text,
        media_id: input.media_id,
    };
    perform_write(&mut world, settings, ctx, intent, effect, DM, lost)
}

fn parse_dm(body: &[u8]) -> Result<DmInput, ApiError> {
    let map = json_object(body)?;
    let mut errors = unknown_fields(&map, &DM_FIELDS);
    let account = required_string(&map, "account", &mut errors);
    let text = match map.get("text") {
        Some(Value::String(text)) if text.is_empty() => {
            errors.push(field_error("text", "too_small", "text must not be empty."));
            None
        }
        Some(Value::String(text)) if text.chars().count() > TEXT_LIMIT => {
            errors.push(field_error(
                "text",
                "too_big",
                "text must be at most 10000 characters.",
            ));
            None
        }
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            errors.push(field_error(
                "text",
                "invalid_type",
                "text must be a string.",
            ));
            None
        }
        None => {
            errors.push(field_error("text", "required", "text is required."));
            None
        }
    };
    let media_id = match map.get("media_ids") {
        None => None,
        Some(Value::Array(ids)) if ids.is_empty() => {
            errors.push(field_error(
                "media_ids",
                "too_small",
                "media_ids must contain exactly 1 item; omit it for a text-only DM.",
            ));
            None
        }
        Some(Value::Array(ids)) if ids.len() > 1 => {
            errors.push(field_error(
                "media_ids",
                "too_big",
                "media_ids must contain exactly 1 item.",
            ));
            None
        }
        Some(Value::Array(ids)) => match ids.first() {
            Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
            _ => {
                errors.push(field_error(
                    "media_ids[0]",
                    "invalid_type",
                    "media_ids items must be media ID strings.",
                ));
                None
            }
        },
        Some(_) => {
            errors.push(field_error(
                "media_ids",
                "invalid_type",
                "media_ids must be an array.",
            ));
            None
        }
    };
    match (account, text) {
        (Some(account), Some(text)) if errors.is_empty() => Ok(DmInput {
            account,
            text,
            media_id,
        }),
        _ => Err(invalid_fields(errors, &DM_FIELDS)),
    }
}

async fn upload_media(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    request: Request,
) -> Response {
    match upload(&shared, &ctx, request).await {
        Ok(response) => response,
        Err(error) => error.render(&ctx),
    }
}

/// An upload request that passed validation.
#[derive(Debug)]
struct MediaInput {
    account: String,
    /// Set for JSON uploads, which the API downloads itself.
    url: Option<String>,
    /// What the idempotency hash covers (for files, their digest).
    payload: Value,
    extension: &'static str,
}

async fn upload(shared: &Shared, ctx: &Ctx, request: Request) -> Result<Response, ApiError> {
    let key = idempotency_key(request.headers())?;
    let multipart = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    let input = if multipart {
        read_form(request).await?
    } else {
        read_media_json(request).await?
    };
    let settings = &shared.settings;
    let account = settings
        .account(&input.account)
        .ok_or_else(ApiError::account_not_found)?;
    if let Some(url) = &input.url
        && !is_https_url(url)
    {
        return Err(ApiError::write_rejected(
            "media_download_failed",
            "Media download failed. Provide a public HTTPS URL to a supported image or video.",
        ));
    }
    let uploader = &settings.accounts[account];
    let hash = request_hash(&uploader.user_id, "upload_media", None, &input.payload);
    let mut world = shared.world();
    let lost = admit(&mut world, settings, ctx, &uploader.handle, true, true)?;
    let intent = Intent {
        key,
        account,
        action: "upload_media",
        target: None,
        payload: input.payload,
        hash,
    };
    let effect = Effect::Media {
        extension: input.extension,
    };
    perform_write(&mut world, settings, ctx, intent, effect, MEDIA, lost)
}

async fn read_form(request: Request) -> Result<MediaInput, ApiError> {
    let malformed = || {
        ApiError::write_invalid(
            "invalid_input",
            "The multipart body is malformed.",
            Vec::new(),
        )
    };
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|_| malformed())?;
    let mut errors = Vec::new();
    let (mut account, mut file, mut long_video) = (None, None, None);
    while let Some(field) = form.next_field().await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "The upload is too large.",
            )
        } else {
            malformed()
        }
    })? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "account" => account = Some(field.text().await.map_err(|_| malformed())?),
            "is_long_video" => long_video = Some(field.text().await.map_err(|_| malformed())?),
            "file" => {
                let hint = format!(
                    "{} {}",
                    field.file_name().unwrap_or_default(),
                    field.content_type().unwrap_or_default()
                );
                let bytes = field.bytes().await.map_err(|_| malformed())?;
                file = Some((bytes, extension_of(&hint)));
            }
            other => errors.push(field_error(other, "unknown_field", "Unknown field.")),
        }
    }
    let account = account
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty());
    if account.is_none() {
        errors.push(field_error("account", "required", "account is required."));
    }
    match &file {
        None => errors.push(field_error("file", "required", "file is required.")),
        Some((bytes, _)) if bytes.is_empty() => {
            errors.push(field_error("file", "too_small", "file must not be empty."));
        }
        Some(_) => {}
    }
    let long_video = match long_video.as_deref().map(str::trim) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => {
            errors.push(field_error(
                "is_long_video",
                "invalid_type",
                "is_long_video must be true or false.",
            ));
            false
        }
    };
    match (account, file) {
        (Some(account), Some((bytes, extension))) if errors.is_empty() => Ok(MediaInput {
            account,
            url: None,
            payload: json!({
                "file_sha256": hex::encode(Sha256::digest(&bytes)),
                "file_bytes": bytes.len(),
                "is_long_video": long_video,
            }),
            extension,
        }),
        _ => Err(invalid_fields(errors, &MEDIA_FORM_FIELDS)),
    }
}

async fn read_media_json(request: Request) -> Result<MediaInput, ApiError> {
    let body = Bytes::from_request(request, &()).await.map_err(|_| {
        ApiError::write_invalid(
            "invalid_input",
            "The request body could not be read.",
            Vec::new(),
        )
    })?;
    let map = json_object(&body)?;
    let mut errors = unknown_fields(&map, &MEDIA_JSON_FIELDS);
    let account = required_string(&map, "account", &mut errors);
    let url = required_string(&map, "url", &mut errors);
    match (account, url) {
        (Some(account), Some(url)) if errors.is_empty() => Ok(MediaInput {
            account,
            extension: extension_of(&url),
            payload: json!({ "url": url }),
            url: Some(url),
        }),
        _ => Err(invalid_fields(errors, &MEDIA_JSON_FIELDS)),
    }
}

/// The media URL suffix the upload gets, from a file name, content type or URL.
fn extension_of(hint: &str) -> &'static str {
    let hint = hint.to_ascii_lowercase();
    ["png", "gif", "webp", "mp4"]
        .into_iter()
        .find(|ext| hint.contains(ext))
        .unwrap_or("jpg")
}

fn is_https_url(url: &str) -> bool {
    let Some(rest) = url
        .get(..8)
        .filter(|scheme| scheme.eq_ignore_ascii_case("https://"))
        .and_then(|_| url.get(8..))
    else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !host.is_empty() && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

async fn write_action(
    State(shared): State<Arc<Shared>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Response {
    poll_action(&shared, &ctx, &id).unwrap_or_else(|e| e.render(&ctx))
}

fn poll_action(shared: &Shared, ctx: &Ctx, id: &str) -> Result<Response, ApiError> {
    let mut world = shared.world();
    if world.action(id).is_none() {
        return Err(ApiError::not_found());
    }
    admit_key_read(&mut world, &shared.settings, ctx)?;
    let action = world.poll(id).ok_or_else(ApiError::not_found)?;
    let poll_after_ms = world.faults.retry_after_ms;
    drop(world);
    Ok(record_response(ctx, &action, false, poll_after_ms))
}

/// [`admit`] for a read that counts against the key's limits, not an
/// account's (a lookup, a write-action poll).
fn admit_key_read(world: &mut World, settings: &Settings, ctx: &Ctx) -> Result<(), ApiError> {
    admit(world, settings, ctx, &key_bucket(ctx), false, false).map(|_| ())
}

/// Applies a cut-off, rolls the faults, then counts the rate limit.
/// `Ok(Some(_))`: a write that is to take effect and then fail anyway.
fn admit(
    world: &mut World,
    settings: &Settings,
    ctx: &Ctx,
    bucket: &str,
    post: bool,
    write: bool,
) -> Result<Option<Transient>, ApiError> {
    if let Some((status, code)) = world.cut_off(bucket) {
        world.log_request(ctx.number, bucket, post, false);
        return Err(ApiError::cut_off(status, code));
    }
    let retry_after_ms = world.faults.retry_after_ms;
    let mut after_effect = None;
    if let Some(transient) = world.transient(write) {
        if !transient.after_effect {
            return Err(ApiError::transient(transient, retry_after_ms, write));
        }
        after_effect = Some(transient);
    }
    let (limit, span) = if post {
        (settings.post_limit_per_min, settings.post_window)
    } else {
        let limit = world
            .faults
            .get_limits
            .iter()
            .find(|(handle, _)| handle == bucket)
            .map_or(settings.get_limit_per_sec, |(_, limit)| *limit);
        (limit, Duration::from_secs(1))
    };
    world
        .rate_limit(ctx.number, bucket, post, limit, span)
        .map_err(ApiError::rate_limited)?;
    Ok(after_effect)
}

/// The tail every write shares: idempotency, credits, effect, lost answer.
fn perform_write(
    world: &mut World,
    settings: &Settings,
    ctx: &Ctx,
    intent: Intent,
    effect: Effect,
    endpoint: &str,
    after_effect: Option<Transient>,
) -> Result<Response, ApiError> {
    let retry_after_ms = world.faults.retry_after_ms;
    let lost = || {
        ApiError::transient(
            Transient {
                status: 503,
                after_effect: true,
            },
            retry_after_ms,
            true,
        )
    };
    match world.replay(&intent.key, &intent.hash) {
        Replay::Conflict => return Err(ApiError::idempotency_conflict()),
        Replay::Same(id) => {
            if after_effect.is_some() {
                return Err(lost());
            }
            let action = world.action(&id).cloned().ok_or_else(ApiError::internal)?;
            return Ok(write_response(settings, ctx, &action, true, retry_after_ms));
        }
        Replay::Fresh => {}
    }
    world
        .charge(endpoint, WRITE_COST)
        .map_err(|balance| ApiError::insufficient_credits(balance, WRITE_COST))?;
    let action = world.apply(settings, intent, effect);
    if after_effect.is_some() || world.take_lost_write() {
        return Err(lost());
    }
    Ok(write_response(
        settings,
        ctx,
        &action,
        false,
        retry_after_ms,
    ))
}

fn write_response(
    settings: &Settings,
    ctx: &Ctx,
    action: &WriteAction,
    replayed: bool,
    poll_after_ms: u64,
) -> Response {
    match settings.write_mode {
        WriteMode::Legacy => Json(action.legacy()).into_response(),
        WriteMode::Completed | WriteMode::Accepted { .. } => {
            record_response(ctx, action, replayed, poll_after_ms)
        }
    }
}

/// 200 with a terminal record, or 202 with a pending one plus the polling
/// headers.
fn record_response(
    ctx: &Ctx,
    action: &WriteAction,
    replayed: bool,
    poll_after_ms: u64,
) -> Response {
    let status = if action.completed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let record = action.record(&ctx.request_id, replayed, poll_after_ms);
    let mut response = (status, Json(record)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&action.status_url()) {
        headers.insert(LOCATION, location);
    }
    if !action.completed {
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from(poll_after_ms.div_ceil(1_000)),
        );
    }
    response
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Err(ApiError::write_invalid(
            "invalid_input",
            "Invalid input. The Idempotency-Key header is required for writes.",
            vec![field_error(
                "Idempotency-Key",
                "required",
                "Send one unique Idempotency-Key header per intended write.",
            )],
        ));
    };
    value
        .to_str()
        .ok()
        .filter(|key| (1..=255).contains(&key.len()) && key.bytes().all(|b| (b'!'..=b'~').contains(&b)))
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::write_invalid(
                "invalid_input",
                "Invalid input. The Idempotency-Key header must be 1 to 255 visible ASCII characters.",
                vec![field_error(
                    "Idempotency-Key",
                    "invalid_format",
                    "Expected ^[!-~]{1,255}$.",
                )],
            )
        })
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::write_invalid(
            "invalid_input",
            INVALID_WRITE,
            vec![field_error(
                "",
                "invalid_json",
                "The body must be a JSON object.",
            )],
        )),
    }
}

fn unknown_fields(map: &Map<String, Value>, allowed: &[&str]) -> Vec<Value> {
    map.keys()
        .filter(|key| !allowed.contains(&key.as_str()))
        .map(|key| {
            if key == "reply_to_message_id" {
                field_error(
                    key,
                    "unsupported_field",
                    "Replies are not supported for direct messages.",
                )
            } else {
                field_error(key, "unknown_field", "Unknown field.")
            }
        })
        .collect()
}

fn required_string(
    map: &Map<String, Value>,
    name: &str,
    errors: &mut Vec<Value>,
) -> Option<String> {
    match map.get(name) {
        Some(Value::String(value)) if !value.trim().is_empty() => Some(value.trim().to_owned()),
        Some(Value::String(_)) | None => {
            errors.push(field_error(
                name,
                "required",
                &format!("{name} is required."),
            ));
            None
        }
        Some(_) => {
            errors.push(field_error(
                name,
                "invalid_type",
                &format!("{name} must be a string."),
            ));
            None
        }
    }
}

fn invalid_fields(errors: Vec<Value>, allowed: &[&str]) -> ApiError {
    let unknown = errors.iter().any(|e| {
        matches!(
            e.get("code").and_then(Value::as_str),
            Some("unknown_field" | "unsupported_field")
        )
    });
    let error = ApiError::write_invalid("invalid_input", INVALID_WRITE, errors);
    if unknown {
        error.with("allowedFields", json!(allowed))
    } else {
        error
    }
}

fn field_error(path: &str, code: &str, message: &str) -> Value {
    json!({ "code": code, "message": message, "path": path })
}

fn key_bucket(ctx: &Ctx) -> String {
    format!("key:{}", ctx.key.as_deref().unwrap_or_default())
}

fn is_numeric_id(id: &str) -> bool {
    (1..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

fn is_username(name: &str) -> bool {
    (1..=15).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

const INVALID_WRITE: &str = "Invalid input. Check request fields.";

/// An error response: status, code, message, extra body fields and headers.
/// Rendered legacy or structured per request.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Map<String, Value>,
    headers: Vec<(HeaderName, String)>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: &str) -> ApiError {
        ApiError {
            status,
            code,
            message: message.to_owned(),
            fields: Map::new(),
            headers: Vec::new(),
        }
    }

    fn with(mut self, name: &str, value: Value) -> ApiError {
        self.fields.insert(name.to_owned(), value);
        self
    }

    fn header(mut self, name: HeaderName, value: String) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// Adds the `XWriteActionError` fields: nothing was charged.
    fn write_shape(self, retryable: bool, safe_to_retry: bool, next_action: Value) -> ApiError {
        self.with("charged", json!(false))
            .with("chargedCredits", json!("0"))
            .with("success", json!(false))
            .with("retryable", json!(retryable))
            .with("safeToRetry", json!(safe_to_retry))
            .with("nextAction", next_action)
    }

    /// `retryAfter` (whole seconds, rounded up), `retryAfterMs` and the
    /// matching `Retry-After` header.
    fn retry_after(self, ms: u64) -> ApiError {
        let seconds = ms.div_ceil(1_000);
        self.with("retryAfter", json!(seconds))
            .with("retryAfterMs", json!(ms))
            .header(RETRY_AFTER, seconds.to_string())
    }

    fn render(self, ctx: &Ctx) -> Response {
        let mut body = self.fields;
        if ctx.structured {
            let kind = error_type(self.code, self.status);
            body.insert(
                "error".to_owned(),
                json!({ "code": self.code, "message": self.message, "type": kind }),
            );
        } else {
            body.insert("error".to_owned(), json!(self.code));
            body.insert("message".to_owned(), json!(self.message));
        }
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }

    fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Authentication required. Provide a valid API key or bearer token.",
        )
        .header(axum::http::header::CACHE_CONTROL, "no-store".to_owned())
        .header(
            axum::http::header::WWW_AUTHENTICATE,
            "Bearer realm=\"xquik\"".to_owned(),
        )
    }

    fn invalid_input(message: &str) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    fn invalid_user_id() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
            "Invalid user ID. Pass a numeric X user ID or a username without @.",
        )
    }

    fn account_required() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "account_required",
            "Provide ?account=<x_handle> for a connected X account. DM history requires a connected participant account.",
        )
    }

    fn account_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "account_not_found",
            "X account not found. Connect it first at /dashboard/account?tab=x-accounts.",
        )
    }

    fn user_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_found",
            "X user not found. Check the username.",
        )
    }

    fn dm_not_permitted() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "dm_not_permitted",
            "X rejected the DM read. The connected account is not a participant in this conversation, or it needs reauthentication. Reconnect the account on the dashboard and try again.",
        )
    }

    fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "Resource not found.")
    }

    fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Unexpected error. Try again.",
        )
    }

    /// The authenticated `PaymentRequired` body of the OpenAPI example.
    fn insufficient_credits(balance: u64, required: u64) -> ApiError {
        let checkout = |path: &str, body: Value| {
            json!({ "create_checkout": {
                "body": body,
                "creates": "checkout_url",
                "method": "POST",
                "path": path,
                "provider": "stripe",
                "requires_authentication": true,
                "requires_user_confirmation": true,
                "response_url_field": "url",
            }})
        };
        ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credits",
            "Insufficient credits. Top up or subscribe to continue.",
        )
        .with("balance", json!(balance.to_string()))
        .with("dashboard", json!("/dashboard/account"))
        .with(
            "next_step",
            json!("Ask the user to confirm a payment option before creating checkout."),
        )
        .with(
            "payment_options",
            json!({
                "credits": checkout("/api/v1/credits/topup", json!({ "dollars": 10, "locale": "en" })),
                "subscription": checkout("/api/v1/subscribe", json!({ "tier": "starter" })),
            }),
        )
        .with("required", json!(required.to_string()))
        .with("top_up_endpoint", json!("/api/v1/credits/topup"))
        .with("top_up_url", json!("POST /api/v1/credits/topup"))
    }

    /// The answer of a [`super::CutOff`].
    fn cut_off(status: u16, code: &'static str) -> ApiError {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::PAYMENT_REQUIRED);
        ApiError::new(
            status,
            code,
            "This request cannot be served (injected cut-off).",
        )
    }

    /// The real rate limiter's 429: the wait until the window reopens.
    fn rate_limited(wait: Duration) -> ApiError {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "Too many requests. Try again later.",
        )
        .retry_after(ms)
    }

    /// An injected transient error.
    fn transient(transient: Transient, retry_after_ms: u64, write: bool) -> ApiError {
        let status =
            StatusCode::from_u16(transient.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match transient.status {
            429 => ApiError::new(
                status,
                "rate_limit_exceeded",
                "Too many requests. Try again later.",
            )
            .retry_after(retry_after_ms),
            // The answer of a write that may or may not have happened: retry
            // with the same key, never with a new one.
            503 if write => ApiError::new(
                status,
                "write_tracking_unavailable",
                "Write tracking unavailable. Try again.",
            )
            .write_shape(
                true,
                false,
                json!({ "type": "retry", "requiresNewIdempotencyKey": false }),
            )
            .retry_after(retry_after_ms),
            503 => ApiError::new(
                status,
                "x_transient_error",
                "X returned a temporary error. Try again shortly.",
            )
            .retry_after(retry_after_ms),
            502 | 424 => ApiError::new(
                status,
                "x_api_unavailable",
                "X data source temporarily unavailable. Try again later.",
            ),
            _ => ApiError::new(status, "internal_error", "Unexpected error. Try again."),
        }
    }

    /// A 400 in the `XWriteActionError` shape, with its `fieldErrors`.
    fn write_invalid(code: &'static str, message: &str, field_errors: Vec<Value>) -> ApiError {
        let error = ApiError::new(StatusCode::BAD_REQUEST, code, message).write_shape(
            false,
            true,
            json!({ "type": "fix_request" }),
        );
        if field_errors.is_empty() {
            error
        } else {
            error.with("fieldErrors", Value::Array(field_errors))
        }
    }

    /// A 422: X refused the write (nothing was sent, nothing charged).
    fn write_rejected(code: &'static str, message: &str) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).write_shape(
            false,
            false,
            json!({ "type": "fix_request" }),
        )
    }

    /// The OpenAPI `WriteIdempotencyConflict` body.
    fn idempotency_conflict() -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "Idempotency-Key was already used with a different request.",
        )
        .write_shape(
            false,
            true,
            json!({ "type": "retry", "requiresNewIdempotencyKey": true }),
        )
    }
}

/// The structured error `type` of a code.
fn error_type(code: &str, status: StatusCode) -> &'static str {
    match code {
        "unauthenticated" => "authentication_error",
        "insufficient_credits" | "no_credits" | "no_subscription" | "subscription_inactive" => {
            "billing_error"
        }
        "dm_not_permitted" | "account_needs_reauth" | "account_restricted" | "x_dm_not_allowed" => {
            "permission_error"
        }
        "rate_limit_exceeded" | "x_rate_limited" | "x_daily_limit" => "rate_limit_error",
        "x_api_unavailable" | "x_transient_error" => "dependency_error",
        _ if status.is_server_error() => "api_error",
        _ => "invalid_request_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults() -> Faults {
        Faults::default()
    }

    #[test]
    fn pages_walk_down_to_index_zero() {
        let thread = Thread::new(1, 0, "1", "2");
        let first = plan_page(
            &thread,
            250,
            Cursor {
                before: 250,
                page: 1,
            },
            &faults(),
            100,
        );
        assert_eq!(first.rows, 150..250);
        assert!(first.has_next);
        let at = thread.decode_cursor(&first.next_cursor).expect("valid");
        assert_eq!(
            at,
            Cursor {
                before: 150,
                page: 2
            }
        );
        let last = plan_page(
            &thread,
            250,
            Cursor {
                before: 50,
                page: 4,
            },
            &faults(),
            100,
        );
        assert_eq!(
            last,
            PagePlan {
                rows: 0..50,
                has_next: false,
                next_cursor: String::new()
            }
        );
    }

    #[test]
    fn repeated_cursor_points_at_the_previous_page() {
        let thread = Thread::new(1, 0, "1", "2");
        let looping = Faults {
            repeated_cursor_after: Some(2),
            ..faults()
        };
        let page2 = plan_page(
            &thread,
            1_000,
            Cursor {
                before: 900,
                page: 2,
            },
            &looping,
            100,
        );
        let page3_cursor = page2.next_cursor.clone();
        let at3 = thread.decode_cursor(&page3_cursor).expect("valid");
        let page3 = plan_page(&thread, 1_000, at3, &looping, 100);
        assert_eq!(
            page3.next_cursor,
            thread.encode_cursor(Cursor {
                before: 900,
                page: 2
            })
        );
    }

    #[test]
    fn identifiers_are_validated() {
        assert!(is_numeric_id("2244994945"));
        assert!(!is_numeric_id("12a"));
        assert!(!is_numeric_id(""));
        assert!(is_username("ada_lovelace"));
        assert!(!is_username("@ada"));
        assert!(!is_username("a_name_that_is_too_long"));
        assert!(is_https_url("https://example.com/a.png"));
        assert!(is_https_url("HTTPS://example.com"));
        assert!(!is_https_url("http://example.com/a.png"));
        assert!(!is_https_url("https:///a.png"));
        assert!(!is_https_url("https://exa mple.com"));
    }
}
