/* Fuzzes the HTTP codec on what a client sends: request heads and bodies, maybe
 * pipelined. Byte 0 seeds the splits; the rest is the byte stream, read the way
 * src/proxy/client.c reads it (tg_http_scan_head, tg_http_parse_head,
 * tg_http_feed). Checked (see http_fuzz.h):
 *  - whole, one byte at a time and in three pseudo-random splits, the codec reads
 *    the same messages: the same refusals, heads (method, target, version, every
 *    field), body bytes and message ends;
 *  - a plain reference reader of RFC 9112 reads the same, never another framing;
 *  - an accepted HTTP/1.1 head has one Host; none has two Content-Lengths or one
 *    with Transfer-Encoding; a body is never longer than the bytes it came in. */
#include <stdint.h>
#include "http_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    hf_driver = "fuzz_http_request";
    hf_input = data;
    hf_input_len = size;
    struct hf_opts o = {.kind = TG_HTTP_REQUEST};
    hf_check(&o, data + 1, size - 1, hf_seed(data[0], data + 1, size - 1));
    hf_input = NULL;
    return 0;
}
