//! The mock provider: a local HTTP server speaking Twilio's Messages API, scripted per
//! message id or recipient, recording every call.

use super::*;

/// What the mock answers after the scripted failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 201 with a message resource.
    Accept,
    /// 503 `{"code": 20503, ...}` forever.
    Unavailable,
    /// 400 `{"code": code, ...}` (21211: invalid `To`).
    Reject(i64),
    /// 401 `{"code": 20003, ...}`: the account's credentials refused.
    Unauthorized,
    /// 429 `{"code": 20429, ...}`: too many requests.
    TooMany,
}

/// Seeded faults on calls that would be accepted: per call, 503 with `p_unavailable`, 429 with
/// `p_too_many`, and with `p_slow` an acceptance only after `slow_ms` (past the client's
/// timeout: the provider took it, the client cannot know). Percentages of 10,000.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub p_unavailable: u64,
    pub p_too_many: u64,
    pub p_slow: u64,
    pub slow_ms: u64,
}

/// A script for one message id or one recipient: the first `fail_first` calls for a message
/// id answer 503, then every call gets `then`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub fail_first: u32,
    pub then: Answer,
}

impl Rule {
    pub fn accept() -> Rule {
        Rule {
            fail_first: 0,
            then: Answer::Accept,
        }
    }
    pub fn fail_first(n: u32) -> Rule {
        Rule {
            fail_first: n,
            then: Answer::Accept,
        }
    }
    pub fn always_unavailable() -> Rule {
        Rule {
            fail_first: 0,
            then: Answer::Unavailable,
        }
    }
    pub fn unauthorized() -> Rule {
        Rule {
            fail_first: 0,
            then: Answer::Unauthorized,
        }
    }
    pub fn reject(code: i64) -> Rule {
        Rule {
            fail_first: 0,
            then: Answer::Reject(code),
        }
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Call {
    /// `I-Twilio-Idempotency-Token`: the message id.
    pub id: String,
    /// When it arrived.
    pub at: Instant,
    /// `X-Correlation-Id`.
    pub correlation_id: Option<String>,
    pub to: String,
    pub from: Option<String>,
    pub body: String,
    /// The form's `Attempt`.
    pub attempt: Option<u32>,
    /// The status the mock answered.
    pub status: u16,
}

/// `lock()` that survives a poisoned mutex (a panicking test thread must not hide the cause).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct MockState {
    calls: Mutex<Vec<Call>>,
    by_id: Mutex<HashMap<String, Rule>>,
    by_recipient: Mutex<HashMap<String, Rule>>,
    default_rule: Mutex<Option<Rule>>,
    /// Simulated latency range, ms.
    latency: Mutex<(u64, u64)>,
    faults: Mutex<Faults>,
    sid_counter: AtomicU64,
    rng: AtomicU64,
    /// What the mock accepted (as soon as it took the request, however late it answers),
    /// for `ListMessage`.
    accepted: Mutex<Vec<Accepted>>,
    /// `ListMessage` requests received.
    lookups: AtomicU64,
    /// Answer `ListMessage` with 500.
    fail_lookups: std::sync::atomic::AtomicBool,
    /// Status a message resource shows, by sid (`sent` when not set), for `FetchMessage`.
    statuses: Mutex<HashMap<String, String>>,
    /// `FetchMessage` requests received.
    fetches: AtomicU64,
}

/// A message the mock accepted.
#[derive(Debug, Clone)]
struct Accepted {
    sid: String,
    to: String,
    from: Option<String>,
    service: Option<String>,
    body: String,
    /// Unix ms.
    created_ms: i64,
}

impl Accepted {
    /// The message resource, with Twilio's RFC 2822 dates (sent as soon as accepted).
    fn resource(&self) -> serde_json::Value {
        self.resource_with("sent")
    }

    fn resource_with(&self, status: &str) -> serde_json::Value {
        let date = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(self.created_ms)
            .unwrap_or_default()
            .to_rfc2822();
        json!({
            "sid": self.sid,
            "account_sid": ACCOUNT_SID,
            "to": self.to,
            "from": self.from,
            "messaging_service_sid": self.service,
            "body": self.body,
            "status": status,
            "direction": "outbound-api",
            "date_created": date,
            "date_sent": date,
            "num_segments": "1",
        })
    }
}

impl MockState {
    /// xorshift: a different draw per call, no shared RNG crate needed.
    fn next_random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        x
    }

    fn rule_for(&self, id: &str, to: &str) -> Rule {
        if let Some(r) = lock(&self.by_id).get(id) {
            return *r;
        }
        if let Some(r) = lock(&self.by_recipient).get(to) {
            return *r;
        }
        lock(&self.default_rule).unwrap_or(Rule::accept())
    }
}

/// A Twilio-compatible SMS API on loopback (see the module docs).
#[derive(Debug, Clone)]
pub struct MockProvider {
    pub addr: SocketAddr,
    state: Arc<MockState>,
}

impl MockProvider {
    pub async fn start() -> MockProvider {
        let state = Arc::new(MockState::default());
        state.rng.store(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(twilio_create_message).get(twilio_list_messages),
            )
            .route(
                "/2010-04-01/Accounts/{sid}/Messages/{file}",
                get(twilio_fetch_message),
            )
            .route("/2010-04-01/Accounts/{file}", get(twilio_fetch_account))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mock provider on 127.0.0.1:0");
        let addr = listener.local_addr().expect("mock provider address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockProvider { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_for_id(&self, id: Uuid, rule: Rule) {
        lock(&self.state.by_id).insert(id.to_string(), rule);
    }

    pub fn set_for_recipient(&self, to: &str, rule: Rule) {
        lock(&self.state.by_recipient).insert(to.to_owned(), rule);
    }

    pub fn set_default(&self, rule: Rule) {
        *lock(&self.state.default_rule) = Some(rule);
    }

    /// Seed the mock's generator (latencies and faults), for a reproducible run.
    pub fn seed(&self, seed: u64) {
        self.state.rng.store(seed.max(1), Ordering::Relaxed);
    }

    /// Inject `faults` into calls that would be accepted (drawn from the mock's seeded
    /// generator).
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.state.faults) = faults;
    }

    /// Answer each call after a random delay in `min_ms..=max_ms` (simulated provider latency).
    pub fn set_latency(&self, min_ms: u64, max_ms: u64) {
        *lock(&self.state.latency) = (min_ms, max_ms.max(min_ms));
    }

    /// The sids of the messages accepted for `to`, oldest first.
    pub fn sids_to(&self, to: &str) -> Vec<String> {
        lock(&self.state.accepted)
            .iter()
            .filter(|m| m.to == to)
            .map(|m| m.sid.clone())
            .collect()
    }

    /// The status `FetchMessage` shows for `sid` from now on (`sent` until set).
    pub fn set_status(&self, sid: &str, status: &str) {
        lock(&self.state.statuses).insert(sid.to_string(), status.to_string());
    }

    /// `FetchMessage` requests so far.
    pub fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::Relaxed)
    }

    /// `ListMessage` requests so far.
    pub fn lookups(&self) -> u64 {
        self.state.lookups.load(Ordering::Relaxed)
    }

    /// Answer `ListMessage` with 500 (a lookup that fails) or normally.
    pub fn fail_lookups(&self, fail: bool) {
        self.state.fail_lookups.store(fail, Ordering::Relaxed);
    }

    /// Every call, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state.calls).clone()
    }

    /// The calls for message `id`, in arrival order.
    pub fn calls_for(&self, id: Uuid) -> Vec<Call> {
        let id = id.to_string();
        lock(&self.state.calls)
            .iter()
            .filter(|c| c.id == id)
            .cloned()
            .collect()
    }

    /// Per message id: how many calls, and how many of them were accepted (201).
    pub fn tally(&self) -> HashMap<String, (usize, usize)> {
        let mut out: HashMap<String, (usize, usize)> = HashMap::new();
        for c in lock(&self.state.calls).iter() {
            let e = out.entry(c.id.clone()).or_default();
            e.0 += 1;
            if c.status == 201 {
                e.1 += 1;
            }
        }
        out
    }
}

fn twilio_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    let want = format!(
        "Basic {}",
        base64(format!("{ACCOUNT_SID}:{AUTH_TOKEN}").as_bytes())
    );
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == want)
}

/// `GET /2010-04-01/Accounts/{sid}.json`: drover's startup check.
async fn twilio_fetch_account(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(sid) = file.strip_suffix(".json") else {
        return twilio_error(StatusCode::NOT_FOUND, 20404, "not found");
    };
    if sid != ACCOUNT_SID || !authorized(&headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    axum::Json(json!({"sid": sid, "status": "active", "type": "Full"})).into_response()
}

/// `POST /2010-04-01/Accounts/{sid}/Messages.json`: record, then answer as scripted.
async fn twilio_create_message(
    State(state): State<Arc<MockState>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let at = Instant::now();
    if sid != ACCOUNT_SID || !authorized(&headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Some(id) = header("i-twilio-idempotency-token") else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21000,
            "missing I-Twilio-Idempotency-Token",
        );
    };
    let to = form.get("To").cloned().unwrap_or_default();
    let body = form.get("Body").cloned().unwrap_or_default();
    let from = form.get("From").cloned();
    let (answer, latency) = {
        let rule = state.rule_for(&id, &to);
        let mut calls = lock(&state.calls);
        let earlier = calls.iter().filter(|c| c.id == id).count() as u32;
        let answer = if earlier < rule.fail_first {
            Answer::Unavailable
        } else {
            rule.then
        };
        let faults = *lock(&state.faults);
        let mut slow = false;
        let answer = if answer == Answer::Accept
            && faults.p_unavailable + faults.p_too_many + faults.p_slow > 0
        {
            let draw = state.next_random() % 10_000;
            if draw < faults.p_unavailable {
                Answer::Unavailable
            } else if draw < faults.p_unavailable + faults.p_too_many {
                Answer::TooMany
            } else {
                slow = draw < faults.p_unavailable + faults.p_too_many + faults.p_slow;
                Answer::Accept
            }
        } else {
            answer
        };
        let status = match answer {
            Answer::Accept => 201,
            Answer::Unavailable => 503,
            Answer::Reject(_) => 400,
            Answer::Unauthorized => 401,
            Answer::TooMany => 429,
        };
        calls.push(Call {
            id: id.clone(),
            at,
            correlation_id: header("x-correlation-id"),
            to: to.clone(),
            from: from.clone(),
            body: body.clone(),
            attempt: form.get("Attempt").and_then(|a| a.parse().ok()),
            status,
        });
        let (lo, hi) = *lock(&state.latency);
        let latency = if slow {
            faults.slow_ms
        } else if hi == 0 {
            0
        } else {
            lo + state.next_random() % (hi - lo + 1)
        };
        (answer, latency)
    };
    // Taken as it arrives: a late answer does not make it less sent.
    let msg_sid = (answer == Answer::Accept).then(|| {
        let n = state.sid_counter.fetch_add(1, Ordering::Relaxed);
        let msg_sid = format!("SM{:032x}", (u128::from(n) << 64) | 0x5eed);
        lock(&state.accepted).push(Accepted {
            sid: msg_sid.clone(),
            to: to.clone(),
            from: from.clone(),
            service: form.get("MessagingServiceSid").cloned(),
            body: body.clone(),
            created_ms: unix_ms(),
        });
        msg_sid
    });
    if latency > 0 {
        // Simulated provider latency (not a synchronisation).
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match answer {
        Answer::Accept => {
            let msg_sid = msg_sid.unwrap_or_default();
            (
                StatusCode::CREATED,
                axum::Json(json!({
                    "sid": msg_sid,
                    "status": "queued",
                    "to": to,
                    "from": from,
                    "body": body,
                    "account_sid": sid,
                    "api_version": "2010-04-01",
                    "num_segments": "1",
                    "num_media": "0",
                    "direction": "outbound-api",
                    "price": null,
                    "error_code": null,
                    "error_message": null,
                    "uri": format!("/2010-04-01/Accounts/{sid}/Messages/{msg_sid}.json"),
                })),
            )
                .into_response()
        }
        Answer::Unavailable => twilio_error(
            StatusCode::SERVICE_UNAVAILABLE,
            20503,
            "Service temporarily unavailable",
        ),
        Answer::Reject(code) => twilio_error(
            StatusCode::BAD_REQUEST,
            code,
            &format!("The 'To' number {to} is not a valid phone number."),
        ),
        Answer::Unauthorized => twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate"),
        Answer::TooMany => twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests"),
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `GET /2010-04-01/Accounts/{sid}/Messages.json` (`ListMessage`): the accepted messages,
/// newest first, filtered by `To`, `From` and `DateSent>` (a `YYYY-MM-DD` day), `PageSize`
/// a page (50 by default), the next page named by `PageToken` in `next_page_uri`.
async fn twilio_list_messages(
    State(state): State<Arc<MockState>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    state.lookups.fetch_add(1, Ordering::Relaxed);
    if sid != ACCOUNT_SID || !authorized(&headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    if state.fail_lookups.load(Ordering::Relaxed) {
        return twilio_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "Internal Server Error",
        );
    }
    let size: usize = query
        .get("PageSize")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let offset: usize = query
        .get("PageToken")
        .and_then(|t| t.strip_prefix("PA"))
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let day = |ms: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string()
    };
    let matching: Vec<Accepted> = lock(&state.accepted)
        .iter()
        .rev()
        .filter(|m| query.get("To").is_none_or(|to| *to == m.to))
        .filter(|m| query.get("From").is_none_or(|f| m.from.as_ref() == Some(f)))
        .filter(|m| {
            query
                .get("DateSent>")
                .is_none_or(|d| day(m.created_ms) >= *d)
        })
        .cloned()
        .collect();
    let page: Vec<serde_json::Value> = matching
        .iter()
        .skip(offset)
        .take(size)
        .map(Accepted::resource)
        .collect();
    let path = format!("/2010-04-01/Accounts/{sid}/Messages.json");
    let next = (offset + size < matching.len()).then(|| {
        let mut url = url::Url::parse("http://next.invalid").expect("a URL");
        url.set_path(&path);
        {
            let mut q = url.query_pairs_mut();
            for key in ["To", "From", "DateSent>"] {
                if let Some(v) = query.get(key) {
                    q.append_pair(key, v);
                }
            }
            q.append_pair("PageSize", &size.to_string());
            q.append_pair("PageToken", &format!("PA{}", offset + size));
        }
        format!("{}?{}", url.path(), url.query().unwrap_or(""))
    });
    axum::Json(json!({
        "messages": page,
        "next_page_uri": next,
        "page_size": size,
        "uri": path,
    }))
    .into_response()
}

/// `GET /2010-04-01/Accounts/{sid}/Messages/{Sid}.json` (`FetchMessage`): an accepted
/// message with the status set by [`MockProvider::set_status`]; 404 (Twilio's 20404) for
/// any other sid.
async fn twilio_fetch_message(
    State(state): State<Arc<MockState>>,
    Path((sid, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    state.fetches.fetch_add(1, Ordering::Relaxed);
    if sid != ACCOUNT_SID || !authorized(&headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let Some(message_sid) = file.strip_suffix(".json") else {
        return twilio_error(StatusCode::NOT_FOUND, 20404, "Not Found");
    };
    let found = lock(&state.accepted)
        .iter()
        .find(|m| m.sid == message_sid)
        .cloned();
    match found {
        Some(m) => {
            let status = lock(&state.statuses)
                .get(message_sid)
                .cloned()
                .unwrap_or_else(|| "sent".into());
            axum::Json(m.resource_with(&status)).into_response()
        }
        None => twilio_error(StatusCode::NOT_FOUND, 20404, "Not Found"),
    }
}

/// Standard base64 with padding (for the expected basic-auth header).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
