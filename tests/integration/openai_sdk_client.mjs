// Drives tollgate with the official OpenAI Node SDK and prints what it saw as JSON.
// env: TG_BASE (http://127.0.0.1:PORT/v1), TG_KEY
// Steps: calls without retries until a RateLimitError; waits its retry-after-ms and calls
// again; spends the bucket again, then calls with maxRetries 3 and lets the SDK retry by
// itself. `wire` lists every HTTP exchange of that last call as the SDK made it.
import OpenAI from 'openai';

const base = process.env.TG_BASE;
const key = process.env.TG_KEY;
const out = { ok: 0, limited: null, retried_ok: false, sdk_retry_ok: false, wire: [] };
const body = { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 };
const header = (h, name) => (h?.get ? h.get(name) : h?.[name]) ?? null;

let log = null; // when set, every exchange is appended to it
async function loggingFetch(url, init) {
  const res = await fetch(url, init);
  if (log) {
    log.push({
      t: Date.now(),
      status: res.status,
      retry_after_ms: res.headers.get('retry-after-ms'),
      retry_count: new Headers(init?.headers).get('x-stainless-retry-count'),
    });
  }
  return res;
}

const noRetry = new OpenAI({ apiKey: key, baseURL: base, maxRetries: 0, timeout: 10000, fetch: loggingFetch });
for (let i = 0; i < 50 && out.limited === null; i++) {
  try {
    await noRetry.chat.completions.create(body);
    out.ok++;
  } catch (err) {
    if (err instanceof OpenAI.RateLimitError) {
      out.limited = {
        status: err.status,
        code: err.code,
        type: err.type,
        message: err.message,
        retry_after: header(err.headers, 'retry-after'),
        retry_after_ms: header(err.headers, 'retry-after-ms'),
      };
    } else {
      out.unexpected = String(err);
      break;
    }
  }
}
if (out.limited) {
  // Timers may fire a millisecond early: wait the advertised time plus 2 ms.
  await new Promise((r) => setTimeout(r, Number(out.limited.retry_after_ms) + 2));
  try {
    await noRetry.chat.completions.create(body);
    out.retried_ok = true;
  } catch (err) {
    out.retry_error = String(err);
  }
  // Spend the bucket again, then let the SDK retry by itself from retry-after-ms.
  for (let i = 0; i < 50; i++) {
    try { await noRetry.chat.completions.create(body); } catch (err) { break; }
  }
  const withRetry = new OpenAI({ apiKey: key, baseURL: base, maxRetries: 3, timeout: 10000, fetch: loggingFetch });
  log = out.wire;
  const t0 = Date.now();
  try {
    await withRetry.chat.completions.create(body);
    out.sdk_retry_ok = true;
    out.sdk_retry_ms = Date.now() - t0;
  } catch (err) {
    out.sdk_retry_error = String(err);
  }
  log = null;
}
console.log(JSON.stringify(out));
