// A Node client for tests/tests/transparent_clients.rs, run by /usr/bin/node (Node 20) inside
// the sandbox exactly as a program would use the standard library: no proxy agent, no CA
// option, nothing taken from the environment by hand.
//
//   node transparent_clients.js fetch|http|https URL
//
// `fetch` is the global fetch (undici), `http`/`https` are `http.get`/`https.get`. Prints
// `status=N` and the body, or `error=...` with the cause's code (EAI_AGAIN, ECONNREFUSED, ...)
// and exits 1.
'use strict';

const [mode, url] = process.argv.slice(2);

function done(status, body) {
  process.stdout.write(`status=${status}\n${body}`);
  process.exit(0);
}

function fail(err) {
  const cause = err.cause || {};
  process.stdout.write(
    `error=${err.name}: ${err.message} cause=${cause.code || ''} ${cause.message || ''}\n`);
  process.exit(1);
}

if (mode === 'fetch') {
  fetch(url).then(async (response) => done(response.status, await response.text()), fail);
} else if (mode === 'http' || mode === 'https') {
  require(mode).get(url, (response) => {
    let body = '';
    response.setEncoding('utf8');
    response.on('data', (chunk) => { body += chunk; });
    response.on('end', () => done(response.statusCode, body));
    response.on('error', fail);
  }).on('error', fail);
} else {
  process.stdout.write(`error=unknown mode ${mode}\n`);
  process.exit(2);
}
