// A raw WebSocket client for tests/tests/websocket_e2e.rs, run by /usr/bin/node (Node 20, no
// global WebSocket, no `ws` package) inside the sandbox: every step by hand, so nothing a
// library does hides what tollgate sends.
//
//   node websocket_e2e_client.js '{"url": "wss://host/path", "headers": {...},
//                                  "messages": ["text", ...], "until_closed": false}'
//
// A malformed upgrade on purpose: `"method": "POST"`, `"omit_key": true` (no
// Sec-WebSocket-Key), `"version": "8"` (another Sec-WebSocket-Version).
//
// CONNECT to the proxy named by HTTPS_PROXY, TLS inside the tunnel (servername, the CA bundle
// from SSL_CERT_FILE, ALPN http/1.1 only), a hand-written upgrade request with a random
// Sec-WebSocket-Key (plus `headers`), the Sec-WebSocket-Accept checked, then each message as
// one masked text frame with its reply read, then a Close 1000 and the Close that answers it,
// and the server's end of the TCP connection (RFC 6455 §7.1.1: the server closes first). With
// `until_closed`, frames are read after the messages until the other side closes (its Close
// is answered with the same code).
//
// Prints one JSON line: `status`, `headers` (lower-case names) and, when the upgrade was
// refused, `body`; after a 101 `accept_ok`, `replies`, `close` ({code, reason, by: "client"
// or "server"}), and `error` on anything unexpected.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const tls = require('tls');

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const OP = { continuation: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 };

const spec = JSON.parse(process.argv[2]);
const target = new URL(spec.url);
const port = Number(target.port || 443);
const proxy = new URL(process.env.HTTPS_PROXY || process.env.https_proxy);
const result = { replies: [] };

function finish(extra) {
  Object.assign(result, extra);
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}

// A guard against a hang (the test fails on it), never a point of synchronisation.
setTimeout(() => finish({ error: 'no end within 15 s' }), 15000).unref();

/** One client frame: FIN set, masked with a fresh key (RFC 6455 §5.3). */
function frame(opcode, payload) {
  const length = payload.length;
  let header;
  if (length < 126) {
    header = Buffer.from([0x80 | opcode, 0x80 | length]);
  } else if (length < 65536) {
    header = Buffer.alloc(4);
    header[1] = 0x80 | 126;
    header.writeUInt16BE(length, 2);
  } else {
    header = Buffer.alloc(10);
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(length), 2);
  }
  header[0] = 0x80 | opcode;
  const mask = crypto.randomBytes(4);
  const masked = Buffer.alloc(length);
  for (let i = 0; i < length; i++) masked[i] = payload[i] ^ mask[i % 4];
  return Buffer.concat([header, mask, masked]);
}

function closeFrame(code) {
  const payload = Buffer.alloc(2);
  payload.writeUInt16BE(code, 0);
  return frame(OP.close, payload);
}

/** The first whole frame at the start of `buffer`, or null when more bytes are needed. */
function parseFrame(buffer) {
  if (buffer.length < 2) return null;
  const fin = (buffer[0] & 0x80) !== 0;
  const rsv = buffer[0] & 0x70;
  const opcode = buffer[0] & 0x0f;
  const masked = (buffer[1] & 0x80) !== 0;
  let length = buffer[1] & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (buffer.length < 4) return null;
    length = buffer.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    if (buffer.length < 10) return null;
    length = Number(buffer.readBigUInt64BE(2));
    offset = 10;
  }
  const maskKey = masked ? buffer.subarray(offset, offset + 4) : null;
  if (masked) offset += 4;
  if (buffer.length < offset + length) return null;
  let payload = Buffer.from(buffer.subarray(offset, offset + length));
  if (maskKey) for (let i = 0; i < length; i++) payload[i] ^= maskKey[i % 4];
  return { fin, rsv, opcode, masked, payload, size: offset + length };
}

function parseHead(text) {
  const [statusLine, ...lines] = text.split('\r\n');
  const headers = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { status: Number(statusLine.split(' ')[1]), headers };
}

function session(conn) {
  const key = crypto.randomBytes(16).toString('base64');
  const request = [
    `${spec.method || 'GET'} ${target.pathname}${target.search} HTTP/1.1`,
    `Host: ${target.host}`,
    'Upgrade: websocket',
    'Connection: Upgrade',
  ];
  if (!spec.omit_key) request.push(`Sec-WebSocket-Key: ${key}`);
  request.push(`Sec-WebSocket-Version: ${spec.version || '13'}`);
  for (const [name, value] of Object.entries(spec.headers || {})) request.push(`${name}: ${value}`);
  conn.write(request.join('\r\n') + '\r\n\r\n');

  const toSend = [...(spec.messages || [])];
  let buffer = Buffer.alloc(0);
  let head = null;
  let closing = false;
  let fragments = [];

  function sendNextOrClose() {
    const next = toSend.shift();
    if (next !== undefined) {
      conn.write(frame(OP.text, Buffer.from(next)));
    } else if (!spec.until_closed) {
      closing = true;
      conn.write(closeFrame(1000));
    }
  }

  function onFrame(f) {
    if (f.masked) result.error = 'the server masked a frame';
    if (f.rsv) result.error = 'a frame has RSV bits set: an extension was negotiated';
    if (f.opcode === OP.ping) return conn.write(frame(OP.pong, f.payload));
    if (f.opcode === OP.close) {
      const code = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : null;
      const reason = f.payload.subarray(2).toString('utf8');
      result.close = { code, reason, by: closing ? 'client' : 'server' };
      if (!closing) conn.write(code === null ? frame(OP.close, Buffer.alloc(0)) : closeFrame(code));
      // The server closes the TCP connection first (RFC 6455 §7.1.1); wait for it.
      return;
    }
    fragments.push(f.payload);
    if (!f.fin) return;
    result.replies.push(Buffer.concat(fragments).toString('utf8'));
    fragments = [];
    sendNextOrClose();
  }

  conn.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    if (!head) {
      const end = buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      head = parseHead(buffer.subarray(0, end).toString('latin1'));
      buffer = buffer.subarray(end + 4);
      result.status = head.status;
      result.headers = head.headers;
      if (head.status === 101) {
        const expected = crypto.createHash('sha1').update(key + GUID).digest('base64');
        result.accept_ok = head.headers['sec-websocket-accept'] === expected;
        sendNextOrClose();
      }
    }
    if (head.status !== 101) {
      const length = Number(head.headers['content-length'] || 0);
      if (buffer.length >= length) finish({ body: buffer.subarray(0, length).toString('utf8') });
      return;
    }
    for (let f = parseFrame(buffer); f; f = parseFrame(buffer)) {
      buffer = buffer.subarray(f.size);
      onFrame(f);
    }
  });
  let ended = false;
  conn.on('end', () => {
    ended = true;
    conn.end();
  });
  conn.on('close', () => finish({}));
  conn.on('error', (e) => {
    // Once the server has ended the connection, what our own close_notify meets is no news.
    if (!ended) finish({ error: `connection: ${e.message}` });
  });
}

const connect = http.request({
  host: proxy.hostname,
  port: proxy.port,
  method: 'CONNECT',
  path: `${target.hostname}:${port}`,
});
connect.on('connect', (response, socket) => {
  result.connect_status = response.statusCode;
  if (response.statusCode !== 200) return finish({ error: 'the CONNECT was refused' });
  const conn = tls.connect({
    socket,
    servername: target.hostname,
    ca: fs.readFileSync(process.env.SSL_CERT_FILE),
    ALPNProtocols: ['http/1.1'],
  });
  const handshakeFailed = (e) => finish({ error: `tls: ${e.message}` });
  conn.on('error', handshakeFailed);
  conn.on('secureConnect', () => {
    result.alpn = conn.alpnProtocol;
    conn.off('error', handshakeFailed);
    session(conn);
  });
});
connect.on('error', (e) => finish({ error: `proxy: ${e.message}` }));
connect.end();
