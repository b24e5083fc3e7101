// Drives tollgate with the official OpenAI Node SDK and prints what it saw as JSON.
// env: TG_BASE (http://127.0.0.1:PORT/v1), TG_KEY
import OpenAI from 'openai';

const base = process.env.TG_BASE;
const key = process.env.TG_KEY;
const out = { ok: 0, limited: null, retried_ok: false, sdk_retry_ok: false };
const body = { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 };

const noRetry = new OpenAI({ apiKey: key, baseURL: base, maxRetries: 0, timeout: 10000 });
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
        retry_after: err.headers?.get ? err.headers.get('retry-after') : err.headers?.['retry-after'],
        retry_after_ms: err.headers?.get ? err.headers.get('retry-after-ms') : err.headers?.['retry-after-ms'],
      };
    } else {
      out.unexpected = String(err);
      break;
    }
  }
}
if (out.limited) {
  await new Promise((r) => setTimeout(r, Number(out.limited.retry_after_ms) + 50));
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
  const withRetry = new OpenAI({ apiKey: key, baseURL: base, maxRetries: 3, timeout: 10000 });
  const t0 = Date.now();
  try {
    await withRetry.chat.completions.create(body);
    out.sdk_retry_ok = true;
    out.sdk_retry_ms = Date.now() - t0;
  } catch (err) {
    out.sdk_retry_error = String(err);
  }
}
console.log(JSON.stringify(out));
