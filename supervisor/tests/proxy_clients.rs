//! Python's urllib through the proxy with nothing tollgate-specific: a GET, a POST, and a
//! refusal read as an ordinary HTTP error with the JSON body.

mod proxy_support;

use proxy_support::*;
use tollgate::proxy::Proxy;

const SCRIPT: &str = r#"
import json, os, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": os.environ["PROXY"]}))
with opener.open("http://api.test/hello?x=1", timeout=10) as r:
    print(r.status, r.headers["Via"], r.read().decode())
with opener.open(urllib.request.Request("http://api.test/submit", data=b"a=1&b=2", method="POST"), timeout=10) as r:
    print(r.status, r.read().decode())
try:
    opener.open("http://elsewhere.test/", timeout=10)
except urllib.error.HTTPError as e:
    body = json.loads(e.read())
    print(e.code, e.headers["Tollgate-Error"], body["error"], body["execution"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_urllib_works_through_the_proxy() {
    let up = upstream(|seen, _| {
        ok(&format!(
            "{} {} {}",
            seen.method,
            seen.uri,
            String::from_utf8_lossy(&seen.body)
        ))
    })
    .await;
    let proxy = start(Proxy::builder(roomy()).transport(up.remap()));
    let (code, out, err) = python(proxy.addr, SCRIPT).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "200 1.1 tollgate GET /hello?x=1 ",
            "200 POST /submit a=1&b=2",
            "403 policy_denied policy_denied exec-test",
        ]
    );
}
