/* Fuzzes the HTTP codec on what an upstream sends back: reply heads and bodies
 * (Content-Length, chunked, until close; 1xx, 204, 304 and replies to HEAD
 * without a body), read the way src/proxy/pump.c reads them, each final reply's
 * body through the usage scanner (tg_scan_*) as the proxy does. Byte 0: bit 0 the
 * request was HEAD, bit 1 every body is SSE (else only text/event-stream ones),
 * bit 2 the scanner strips usage-only events, the rest seeds the splits.
 * Checked (see http_fuzz.h): whole, one byte at a time and in pseudo-random
 * splits the codec reads the same replies, bodies and usage (and stripped bytes);
 * a plain reference reader of RFC 9112 reads the same framing; an accepted
 * reply never has two lengths, a body only where one may be. */
#include <stdint.h>
#include "http_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    hf_driver = "fuzz_http_reply";
    hf_input = data;
    hf_input_len = size;
    struct hf_opts o = {
        .kind = TG_HTTP_REPLY,
        .skip_body = data[0] & 1,
        .sse = data[0] & 2,
        .strip = data[0] & 4,
    };
    hf_check(&o, data + 1, size - 1, hf_seed(data[0] >> 3, data + 1, size - 1));
    hf_input = NULL;
    return 0;
}
