// Spends a prepaid balance with the official OpenAI Node SDK until tollgate says the quota is
// gone, and prints what the SDK made of that answer as JSON.
// env: TG_BASE (http://127.0.0.1:PORT/v1), TG_KEY
import OpenAI from 'openai';

const client = new OpenAI({ apiKey: process.env.TG_KEY, baseURL: process.env.TG_BASE, maxRetries: 0,
                            timeout: 10000 });
const body = { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 };
const out = { ok: 0, error: null };
for (let i = 0; i < 20 && out.error === null; i++) {
  try {
    await client.chat.completions.create(body);
    out.ok++;
  } catch (err) {
    out.error = {
      class: err?.constructor?.name ?? String(err),
      status: err.status ?? null,
      code: err.code ?? null,
      type: err.type ?? null,
      message: err.message ?? null,
    };
  }
}
console.log(JSON.stringify(out));
