//! `before_http` / `after_http` hooks: cancel, rewrite (decided again from scratch), observe,
//! registration order, and an async hook.

mod proxy_support;

use proxy_support::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate::proxy::{
    AfterHttp, BeforeHttp, BoxFuture, HookRequest, HookResponse, HookVerdict, Proxy,
};
use tollgate_policy::url::NormalizedUrl;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_can_cancel_with_a_reason() {
    let up = upstream(|_, _| ok("fine")).await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()).before_http(
        |request: &mut HookRequest| {
            if request.url.path.starts_with("/admin") {
                HookVerdict::Cancel("admin paths are closed during the audit".into())
            } else {
                HookVerdict::Continue
            }
        },
    ));
    let got = curl(proxy.addr, &["http://api.test/admin/users"]).await;
    assert_eq!(got.status, 403);
    assert!(got.headers.contains("tollgate-error: policy_denied"));
    assert!(got
        .body_text()
        .contains("admin paths are closed during the audit"));
    assert_eq!(
        curl(proxy.addr, &["http://api.test/public"]).await.status,
        200
    );
    assert_eq!(up.count(), 1);
    assert_eq!(proxy.records()[0]["reason"], "hook_cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_url_is_decided_again() {
    let up = upstream(|seen, _| ok(&seen.uri)).await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()).before_http(
        |request: &mut HookRequest| {
            let target = match request.url.path.as_str() {
                "/escape" => "http://not-allowed.test/x",
                "/metadata" => "http://169.254.169.254/latest/meta-data/",
                "/v1/thing" => "http://api.test/v2/thing?rewritten=1",
                _ => return HookVerdict::Continue,
            };
            request.url = NormalizedUrl::parse(target).unwrap();
            request.headers.insert("x-hooked", "yes".parse().unwrap());
            request
                .headers
                .insert("connection", "x-hook-hop".parse().unwrap());
            request.headers.insert("x-hook-hop", "1".parse().unwrap());
            request
                .headers
                .insert("tollgate-sneaky", "1".parse().unwrap());
            HookVerdict::Continue
        },
    ));
    let got = curl(proxy.addr, &["http://api.test/v1/thing"]).await;
    assert_eq!(
        (got.status, got.body_text().as_str()),
        (200, "/v2/thing?rewritten=1")
    );
    let seen = &up.seen()[0];
    assert_eq!(
        seen.headers["x-hooked"], "yes",
        "headers a hook sets are sent"
    );
    assert!(!seen.headers.contains_key("connection"));
    assert!(!seen.headers.contains_key("x-hook-hop"));
    assert!(!seen.headers.contains_key("tollgate-sneaky"));
    let got = curl(proxy.addr, &["http://api.test/escape"]).await;
    assert_eq!(got.status, 403);
    assert!(got
        .body_text()
        .contains("not-allowed.test is not in team acme's allow list"));
    let got = curl(proxy.addr, &["http://api.test/metadata"]).await;
    assert_eq!(got.status, 403);
    assert_eq!(up.count(), 1);
    let records = proxy.records();
    assert_eq!(records[1]["host"], "not-allowed.test");
    assert_eq!(records[1]["reason"], "host_not_allowed");
}

/// An asynchronous hook: waits, then records what it saw.
struct Slow(Arc<Mutex<Vec<String>>>);

impl BeforeHttp for Slow {
    fn before_http<'a>(&'a self, request: &'a mut HookRequest) -> BoxFuture<'a, HookVerdict> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.0
                .lock()
                .unwrap()
                .push(format!("async {} {}", request.method(), request.url.path));
            HookVerdict::Continue
        })
    }
}

struct Observer(Arc<Mutex<Vec<String>>>);

impl AfterHttp for Observer {
    fn after_http<'a>(&'a self, response: &'a HookResponse) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let marker = response
                .headers
                .get("x-upstream")
                .map(|v| v.to_str().unwrap().to_owned());
            self.0
                .lock()
                .unwrap()
                .push(format!("after {} {:?}", response.status.as_u16(), marker));
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_observe_in_registration_order() {
    let up = upstream(|_, _| {
        let mut response = status(201, "made");
        response
            .headers_mut()
            .insert("x-upstream", "marker".parse().unwrap());
        response
    })
    .await;
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let first = log.clone();
    let sync_after = log.clone();
    let proxy = start(
        Proxy::builder(roomy())
            .transport(up.remap())
            .before_http(move |request: &mut HookRequest| {
                let names: Vec<&str> = request.headers.keys().map(|k| k.as_str()).collect();
                first.lock().unwrap().push(format!(
                    "first {} {} {}",
                    request.method(),
                    request.url.redacted(),
                    names.contains(&"x-client")
                ));
                HookVerdict::Continue
            })
            .before_http(Slow(log.clone()))
            .after_http(Observer(log.clone()))
            .after_http(move |response: &HookResponse| {
                sync_after
                    .lock()
                    .unwrap()
                    .push(format!("sync after {}", response.url.path));
            }),
    );
    let got = curl(
        proxy.addr,
        &[
            "-X",
            "POST",
            "-H",
            "X-Client: 1",
            "http://api.test/things?secret=1",
        ],
    )
    .await;
    assert_eq!(got.status, 201);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "first POST http://api.test/things true",
            "async POST /things",
            "after 201 Some(\"marker\")",
            "sync after /things",
        ]
    );
}
