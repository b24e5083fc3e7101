/* Unit tests of the cost model: estimates, asking for usage, reply scanning, settling. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>
#include "tollgate/cost.h"

#define CPT 4
#define DEF_MAX 4096

/* ---- estimates ---- */

static struct tg_cost est_full(enum tg_cost_model m, int cpt, int def, const char *body, size_t len,
                               struct tg_request_info *info)
{
    char err[TG_ERR_LEN];
    struct tg_cost c;
    struct tg_request_info tmp;
    if (!info) info = &tmp;
    if (tg_cost_estimate(m, cpt, def, body, len, &c, info, err) != 0)
        fail_msg("estimate failed: %s (body %s)", err, body);
    assert_int_equal(c.u[TG_UNIT_REQUESTS], TG_MICRO);
    return c;
}

static struct tg_cost est(enum tg_cost_model m, const char *body, struct tg_request_info *info)
{
    return est_full(m, CPT, DEF_MAX, body, strlen(body), info);
}

/* whole tokens of an estimate (a token estimate is always whole) */
static int64_t tokens_of(struct tg_cost c)
{
    assert_int_equal(c.u[TG_UNIT_TOKENS] % TG_MICRO, 0);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 0);
    return c.u[TG_UNIT_TOKENS] / TG_MICRO;
}

static void est_err(enum tg_cost_model m, const char *body, const char *want)
{
    char err[TG_ERR_LEN];
    struct tg_cost c;
    struct tg_request_info info;
    int rc = tg_cost_estimate(m, CPT, DEF_MAX, body, strlen(body), &c, &info, err);
    if (rc != -1) fail_msg("expected an error for %s", body);
    if (!strstr(err, want))
        fail_msg("error for %s is \"%s\", expected it to contain \"%s\"", body, err, want);
    assert_true(strlen(err) < TG_ERR_LEN);
}

static void test_chat_string(void **state)
{
    struct tg_request_info info;
    /* "Hello world!" = 12 chars = 3 tokens, + default 4096 */
    struct tg_cost c = est(TG_COST_TOKENS,
                           "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"system\",\"content\":"
                           "\"Hello \"},{\"role\":\"user\",\"content\":\"world!\"}]}",
                           &info);
    assert_int_equal(tokens_of(c), 3 + 4096);
    assert_string_equal(info.model, "gpt-4o");
    assert_int_equal(info.prompt_tokens_est, 3);
    assert_false(info.stream);
    assert_false(info.client_wants_usage);
    /* 13 chars round up to 4 tokens */
    c = est(TG_COST_TOKENS, "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello world!!\"}]}",
            &info);
    assert_int_equal(info.prompt_tokens_est, 4);
    assert_string_equal(info.model, "");
    /* assistant messages with null content and tool calls count nothing */
    c = est(TG_COST_TOKENS,
            "{\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]}],"
            "\"max_tokens\":10}",
            NULL);
    assert_int_equal(tokens_of(c), 10);
}

static void test_chat_parts(void **state)
{
    struct tg_request_info info;
    struct tg_cost c = est(TG_COST_TOKENS,
                           "{\"messages\":[{\"role\":\"user\",\"content\":["
                           "{\"type\":\"text\",\"text\":\"abcd\"},"
                           "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x/y.png\"}},"
                           "{\"type\":\"text\",\"text\":\"efgh1\"}]}],\"max_tokens\":7}",
                           &info);
    assert_int_equal(info.prompt_tokens_est, 3); /* 9 chars */
    assert_int_equal(tokens_of(c), 3 + 7);
}

static void test_chat_completion_part(void **state)
{
    const char *msgs = "\"messages\":[{\"role\":\"user\",\"content\":\"abcd\"}]";
    char body[512];
    snprintf(body, sizeof body, "{%s,\"max_tokens\":100,\"n\":3}", msgs);
    assert_int_equal(tokens_of(est(TG_COST_TOKENS, body, NULL)), 1 + 300);
    snprintf(body, sizeof body, "{%s,\"max_tokens\":100,\"max_completion_tokens\":50}", msgs);
    assert_int_equal(tokens_of(est(TG_COST_TOKENS, body, NULL)), 1 + 50);
    snprintf(body, sizeof body, "{\"max_completion_tokens\":50,%s,\"max_tokens\":100,\"n\":2}",
             msgs);
    assert_int_equal(tokens_of(est(TG_COST_TOKENS, body, NULL)), 1 + 100);
    /* null means absent */
    snprintf(body, sizeof body, "{%s,\"max_completion_tokens\":null,\"max_tokens\":20,\"n\":null}",
             msgs);
    assert_int_equal(tokens_of(est(TG_COST_TOKENS, body, NULL)), 1 + 20);
    /* the route's default, times n */
    snprintf(body, sizeof body, "{%s,\"n\":2}", msgs);
    assert_int_equal(tokens_of(est_full(TG_COST_TOKENS, CPT, 1000, body, strlen(body), NULL)),
                     1 + 2000);
    /* an integral decimal is an integer */
    snprintf(body, sizeof body, "{%s,\"max_tokens\":64.0}", msgs);
    assert_int_equal(tokens_of(est(TG_COST_TOKENS, body, NULL)), 1 + 64);
}

static void test_chat_info(void **state)
{
    struct tg_request_info info;
    (void)est(TG_COST_TOKENS,
              "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
              "\"messages\":[]}",
              &info);
    assert_true(info.stream);
    assert_true(info.client_wants_usage);
    (void)est(TG_COST_TOKENS,
              "{\"stream\":true,\"stream_options\":{\"include_usage\":false},\"messages\":[]}",
              &info);
    assert_true(info.stream);
    assert_false(info.client_wants_usage);
    (void)est(TG_COST_TOKENS, "{\"stream\":false,\"messages\":[]}", &info);
    assert_false(info.stream);
}

static void test_model_truncated(void **state)
{
    /* 200 two-byte characters: cut at a character boundary below TG_MODEL_LEN */
    char body[1024] = "{\"model\":\"";
    for (int i = 0; i < 200; i++)
        strcat(body, "\xc3\xa9");
    strcat(body, "\",\"messages\":[]}");
    struct tg_request_info info;
    (void)est(TG_COST_TOKENS, body, &info);
    size_t n = strlen(info.model);
    assert_int_equal(n, TG_MODEL_LEN - 2); /* 126 bytes = 63 whole characters */
    for (size_t i = 0; i < n; i += 2)
        assert_memory_equal(info.model + i, "\xc3\xa9", 2);
    /* ASCII fills all of it */
    char body2[1024] = "{\"model\":\"";
    for (int i = 0; i < 300; i++)
        strcat(body2, "a");
    strcat(body2, "\"}");
    (void)est(TG_COST_REQUESTS, body2, &info);
    assert_int_equal(strlen(info.model), TG_MODEL_LEN - 1);
}

static void test_completions(void **state)
{
    struct tg_request_info info;
    struct tg_cost c =
        est(TG_COST_TOKENS,
            "{\"model\":\"gpt-3.5-turbo-instruct\",\"prompt\":\"Say this is a test\","
            "\"max_tokens\":7}",
            &info);
    assert_int_equal(info.prompt_tokens_est, 5); /* 18 chars */
    assert_int_equal(tokens_of(c), 5 + 7);
    c = est(TG_COST_TOKENS, "{\"prompt\":[\"abcd\",\"efgh\",\"ij\"],\"max_tokens\":1,\"n\":4}",
            &info);
    assert_int_equal(info.prompt_tokens_est, 3);
    assert_int_equal(tokens_of(c), 3 + 4);
    /* token ids count as tokens */
    c = est(TG_COST_TOKENS, "{\"prompt\":[1,2,3,4,5],\"max_tokens\":1}", &info);
    assert_int_equal(tokens_of(c), 5 + 1);
}

static void test_embeddings(void **state)
{
    struct tg_request_info info;
    struct tg_cost c = est(TG_COST_TOKENS,
                           "{\"model\":\"text-embedding-3-small\",\"input\":\"The food was "
                           "delicious\"}",
                           &info);
    assert_int_equal(tokens_of(c), 6); /* 22 chars, no completion part */
    assert_int_equal(info.prompt_tokens_est, 6);
    c = est(TG_COST_TOKENS, "{\"input\":[\"abcd\",\"abcde\",\"\"],\"max_tokens\":100,\"n\":3}",
            &info);
    assert_int_equal(tokens_of(c), 3);
    c = est(TG_COST_TOKENS, "{\"input\":[[1,2,3],[4,5],[]]}", &info);
    assert_int_equal(tokens_of(c), 5);
    c = est(TG_COST_TOKENS, "{\"input\":[10,20,30]}", &info);
    assert_int_equal(tokens_of(c), 3);
    /* with messages it is a chat body again */
    c = est(TG_COST_TOKENS, "{\"input\":\"abcd\",\"messages\":[],\"max_tokens\":5}", &info);
    assert_int_equal(tokens_of(c), 1 + 5);
}

static void test_utf8_counting(void **state)
{
    struct tg_request_info info;
    /* h é l l o ␠ w ö r l d ␠ 😀 = 13 code points, 18 bytes */
    const char *b = "{\"messages\":[{\"role\":\"user\",\"content\":\"h\xc3\xa9llo w\xc3\xb6rld "
                    "\xf0\x9f\x98\x80\"}],\"max_tokens\":1}";
    (void)est_full(TG_COST_TOKENS, 1, DEF_MAX, b, strlen(b), &info);
    assert_int_equal(info.prompt_tokens_est, 13);
    /* escapes are decoded first: \u00e9 and a surrogate pair are one each */
    b = "{\"input\":\"\\u00e9\\ud83d\\ude00\\n\"}";
    assert_int_equal(tokens_of(est_full(TG_COST_TOKENS, 1, DEF_MAX, b, strlen(b), &info)), 3);
}

static void test_video(void **state)
{
    struct tg_request_info info;
    struct tg_cost c = est(TG_COST_VIDEO, "{\"model\":\"sora-2\",\"prompt\":\"a cat\"}", &info);
    /* defaults: 4 s at 720x1280 */
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 4 * TG_MICRO);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 0);
    assert_int_equal(info.video_seconds, TG_VIDEO_DEFAULT_SECONDS);
    assert_int_equal(info.width, 720);
    assert_int_equal(info.height, 1280);
    assert_string_equal(info.model, "sora-2");
    c = est(TG_COST_VIDEO, "{\"seconds\":\"4\",\"size\":\"1280x720\"}", &info);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 4 * TG_MICRO);
    c = est(TG_COST_VIDEO, "{\"seconds\":\"8\",\"size\":\"1920x1080\"}", &info);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 18 * TG_MICRO);
    assert_int_equal(info.video_seconds, 8);
    assert_int_equal(info.width, 1920);
    assert_int_equal(info.height, 1080);
    struct tg_cost c2 = est(TG_COST_VIDEO, "{\"seconds\":8,\"size\":\"1920x1080\"}", &info);
    assert_int_equal(c2.u[TG_UNIT_VIDEO_SECONDS], c.u[TG_UNIT_VIDEO_SECONDS]);
    /* 1 s at 640x360 is a quarter unit; an odd size rounds up to a micro-unit */
    c = est(TG_COST_VIDEO, "{\"seconds\":1,\"size\":\"640x360\"}", &info);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], TG_MICRO / 4);
    c = est(TG_COST_VIDEO, "{\"seconds\":1,\"size\":\"1x1\"}", &info);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 2); /* 1e6 / 921600 = 1.085 -> 2 */
    /* a started second counts whole */
    c = est(TG_COST_VIDEO, "{\"seconds\":\"2.5\",\"size\":\"1280x720\"}", &info);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 3 * TG_MICRO);
    assert_int_equal(info.video_seconds, 3);
}

static void test_video_multipart(void **state)
{
    struct tg_request_info info;
    const char *b =
        "--XyZ\r\n"
        "Content-Disposition: form-data; name=\"model\"\r\n\r\n"
        "sora-2-pro\r\n"
        "--XyZ\r\n"
        "Content-Disposition: form-data; name=\"input_reference\"; filename=\"size\"\r\n"
        "Content-Type: image/png\r\n\r\n"
        "\x89PNG\r\n--X\r\n\r\n"
        "\r\n--XyZ\r\n"
        "Content-Disposition: form-data; name=\"seconds\"\r\n\r\n"
        "8\r\n"
        "--XyZ\r\n"
        "Content-Disposition: form-data; name=\"size\"\r\n\r\n"
        "1920x1080\r\n"
        "--XyZ--\r\n";
    struct tg_cost c = est(TG_COST_VIDEO, b, &info);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 18 * TG_MICRO);
    assert_string_equal(info.model, "sora-2-pro");
    est_err(TG_COST_VIDEO,
            "--b\r\nContent-Disposition: form-data; name=\"size\"\r\n\r\n12x\r\n--b--\r\n",
            "'size'");
    est_err(TG_COST_VIDEO, "--b\r\nContent-Disposition: form-data; name=\"size\"\r\n\r\n12x",
            "multipart");
}

static void test_requests_route(void **state)
{
    struct tg_request_info info;
    struct tg_cost c = est_full(TG_COST_REQUESTS, CPT, DEF_MAX, NULL, 0, &info);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 0);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 0);
    c = est(TG_COST_REQUESTS, "not json at all", &info);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 0);
    c = est(TG_COST_REQUESTS, "{\"model\":\"omni-moderation-latest\",\"input\":\"x\"}", &info);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 0);
    assert_string_equal(info.model, "omni-moderation-latest");
}

static void test_estimate_errors(void **state)
{
    const enum tg_cost_model T = TG_COST_TOKENS, V = TG_COST_VIDEO;
    est_err(T, "", "We could not parse the JSON body of your request.");
    est_err(T, "{\"messages\":[}", "We could not parse the JSON body of your request.");
    est_err(T, "{\"a\":1} trailing", "We could not parse the JSON body");
    est_err(V, "model=sora", "We could not parse the JSON body");
    est_err(T, "[1,2]", "expected a JSON object, but got an array");
    est_err(T, "\"hi\"", "expected a JSON object, but got a string");
    est_err(T, "{\"messages\":\"hello\"}",
            "Invalid type for 'messages': expected an array, but got a string instead.");
    est_err(T, "{\"messages\":[{\"content\":\"a\"},3]}", "'messages[1]': expected an object");
    est_err(T, "{\"messages\":[{\"content\":5}]}", "'messages[0].content'");
    est_err(T, "{\"messages\":[],\"max_tokens\":\"100\"}",
            "Invalid type for 'max_tokens': expected an integer, but got a string instead.");
    est_err(T, "{\"messages\":[],\"max_tokens\":0}",
            "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 "
            "instead.");
    est_err(T, "{\"messages\":[],\"max_tokens\":-3}", "'max_tokens'");
    est_err(T, "{\"messages\":[],\"max_tokens\":3000000000}",
            "'max_tokens': integer above maximum");
    est_err(
        T, "{\"messages\":[],\"max_completion_tokens\":1.5}",
        "Invalid type for 'max_completion_tokens': expected an integer, but got a decimal number");
    est_err(T, "{\"messages\":[],\"max_tokens\":10,\"max_completion_tokens\":true}",
            "'max_completion_tokens'");
    est_err(T, "{\"messages\":[],\"n\":0}", "Invalid 'n': integer below minimum value");
    est_err(
        T, "{\"messages\":[],\"n\":129}",
        "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 129 instead.");
    est_err(T, "{\"messages\":[],\"n\":\"2\"}", "Invalid type for 'n'");
    est_err(T, "{\"prompt\":42}", "Invalid type for 'prompt': expected a string or an array");
    est_err(T, "{\"prompt\":[\"a\",true]}", "Invalid type for 'prompt[1]'");
    est_err(T, "{\"input\":{\"text\":\"a\"}}", "Invalid type for 'input'");
    est_err(T, "{\"input\":[[1,\"a\"]]}", "Invalid type for 'input[0][1]': expected an integer");
    est_err(V, "{\"seconds\":0}", "Invalid value for 'seconds'");
    est_err(V, "{\"seconds\":-4}", "Invalid value for 'seconds'");
    est_err(V, "{\"seconds\":3601}", "Invalid value for 'seconds'");
    est_err(V, "{\"seconds\":\"abc\"}", "Invalid value for 'seconds'");
    est_err(V, "{\"seconds\":\"\"}", "Invalid value for 'seconds'");
    est_err(V, "{\"seconds\":\"1e3\"}", "Invalid value for 'seconds'");
    est_err(V, "{\"seconds\":[4]}", "Invalid type for 'seconds': expected a string or a number");
    est_err(V, "{\"size\":\"1280\"}", "Invalid value for 'size'");
    est_err(V, "{\"size\":\"0x720\"}", "Invalid value for 'size'");
    est_err(V, "{\"size\":\"8193x720\"}", "Invalid value for 'size'");
    est_err(V, "{\"size\":\"1280x720 \"}", "Invalid value for 'size'");
    est_err(V, "{\"size\":\"-1280x720\"}", "Invalid value for 'size'");
    est_err(V, "{\"size\":1280}", "Invalid type for 'size': expected a string");
    est_err(V, "[]", "expected a JSON object");
    /* the largest values pass */
    struct tg_cost c = est(V, "{\"seconds\":3600,\"size\":\"8192x8192\"}", NULL);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS],
                     (3600LL * 8192 * 8192 * TG_MICRO + 921599) / 921600);
    c = est(T, "{\"messages\":[],\"max_tokens\":2147483647,\"n\":128}", NULL);
    assert_int_equal(tokens_of(c), 2147483647LL * 128);
}

/* The body check accepts what jansson accepts, nothing more or less. */
static void test_json_strictness(void **state)
{
    static const char *const cases[] = {
        "{\"a\":9223372036854775807}",
        "{\"a\":9223372036854775808}",
        "{\"a\":-9223372036854775808}",
        "{\"a\":-9223372036854775809}",
        "{\"a\":-0}",
        "{\"a\":1e308}",
        "{\"a\":1e309}",
        "{\"a\":-1e309}",
        "{\"a\":1e-400}",
        "{\"a\":0.5e1}",
        "{\"a\":01}",
        "{\"a\":-}",
        "{\"a\":1.}",
        "{\"a\":.5}",
        "{\"a\":1e}",
        "{\"a\":1e+}",
        "{\"a\":+1}",
        "{\"a\":0x10}",
        "{\"a\":\"\\u0000\"}",
        "{\"\\u0000\":1}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\udc00\"}",
        "{\"a\":\"\\ud83d\\ude00\"}",
        "{\"a\":\"\\ud800\\ud800\"}",
        "{\"a\":\"\\u12\"}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\t\"}",
        "{\"a\":\"\xc3\xa9\"}",
        "{\"a\":\"\xc0\xaf\"}",
        "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":\"\xf4\x90\x80\x80\"}",
        "{\"a\":\"\xe2\x82\"}",
        "{\"a\":tru}",
        "{\"a\":nulll}",
        "{\"a\":[1,]}",
        "{\"a\":1,}",
        "{,}",
        "{\"a\" 1}",
        "{\"a\":1 \"b\":2}",
        "{} {}",
        " \r\n\t{}\n",
        "\xef\xbb\xbf{}",
        "",
        "   ",
        "{\"a\":[1,2,{\"b\":[]}],\"c\":{}}",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(cases); i++) {
        json_error_t e;
        json_t *j = json_loadb(cases[i], strlen(cases[i]), 0, &e);
        char err[TG_ERR_LEN];
        struct tg_cost c;
        struct tg_request_info info;
        int rc = tg_cost_estimate(TG_COST_TOKENS, CPT, DEF_MAX, cases[i], strlen(cases[i]), &c,
                                  &info, err);
        if ((rc == 0) != (j != NULL))
            fail_msg("body %s: jansson %s, estimate %s", cases[i], j ? "accepts" : e.text,
                     rc == 0 ? "accepts" : err);
        if (rc != 0) assert_non_null(strstr(err, "could not parse the JSON body"));
        json_decref(j);
    }
    /* nesting: jansson's limit of 2048 levels, counted per value */
    char *deep = malloc(2 * 2048 + 8);
    assert_non_null(deep);
    for (int scalar = 0; scalar < 2; scalar++) {
        for (int d = 2046; d <= 2049; d++) {
            size_t n = 0;
            deep[n++] = '{';
            deep[n++] = '"';
            deep[n++] = 'a';
            deep[n++] = '"';
            deep[n++] = ':';
            for (int k = 1; k < d; k++)
                deep[n++] = '[';
            if (scalar) deep[n++] = '1';
            for (int k = 1; k < d; k++)
                deep[n++] = ']';
            deep[n++] = '}';
            json_error_t e;
            json_t *j = json_loadb(deep, n, 0, &e);
            char err[TG_ERR_LEN];
            struct tg_cost c;
            struct tg_request_info info;
            int rc = tg_cost_estimate(TG_COST_TOKENS, CPT, DEF_MAX, deep, n, &c, &info, err);
            if ((rc == 0) != (j != NULL)) fail_msg("depth %d (scalar %d) differs", d, scalar);
            json_decref(j);
        }
    }
    free(deep);
}

/* ---- asking for usage ---- */

static char *req_usage(const char *body, size_t *outlen)
{
    char *out = tg_cost_request_usage(body, strlen(body), outlen);
    if (out) {
        /* whatever the path, the result says include_usage: true */
        json_error_t e;
        json_t *j = json_loadb(out, *outlen, 0, &e);
        if (!j) fail_msg("not JSON: %.*s (%s)", (int)*outlen, out, e.text);
        assert_true(
            json_is_true(json_object_get(json_object_get(j, "stream_options"), "include_usage")));
        json_decref(j);
    }
    return out;
}

static void expect_usage_body(const char *in, const char *want)
{
    size_t n = 0;
    char *out = req_usage(in, &n);
    assert_non_null(out);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(out, want, n);
    free(out);
}

static void test_request_usage(void **state)
{
    expect_usage_body("{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{\"role\":\"user\","
                      "\"content\":\"hi\"}],\"temperature\":0.7}",
                      "{\"stream_options\":{\"include_usage\":true},\"model\":\"gpt-4o\","
                      "\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                      "\"temperature\":0.7}");
    expect_usage_body("  {\n  \"stream\" : true\n}\n",
                      "  {\"stream_options\":{\"include_usage\":true},\n  \"stream\" : true\n}\n");
    expect_usage_body("{}", "{\"stream_options\":{\"include_usage\":true}}");
    expect_usage_body("{ \n}", "{\"stream_options\":{\"include_usage\":true} \n}");
    /* stream_options present: set inside it, every other byte as it was */
    expect_usage_body(
        "{\"stream\":true,\"stream_options\":{\"include_usage\":false},\"top_p\":0.9}",
        "{\"stream\":true,\"stream_options\":{\"include_usage\":true},\"top_p\":0.9}");
    expect_usage_body("{\"stream_options\":{},\"a\":1}",
                      "{\"stream_options\":{\"include_usage\":true},\"a\":1}");
    expect_usage_body(
        "{\"stream_options\":{\"x\":[1,{\"include_usage\":false}]}}",
        "{\"stream_options\":{\"include_usage\":true,\"x\":[1,{\"include_usage\":false}]}}");
    expect_usage_body("{\"stream_options\":null}", "{\"stream_options\":{\"include_usage\":true}}");
    expect_usage_body("{\"stream_options\" : { \"include_usage\" : null } }",
                      "{\"stream_options\" : { \"include_usage\" : true } }");
    /* not a JSON object: nothing to do */
    size_t n;
    assert_null(tg_cost_request_usage("[1]", 3, &n));
    assert_null(tg_cost_request_usage("{\"a\":", 5, &n));
    assert_null(tg_cost_request_usage("", 0, &n));
}

/* ---- the scanner, fed in every split ---- */

struct sink {
    char *buf;
    size_t len, cap;
    size_t calls;
};

static void sink_emit(void *arg, const char *d, size_t n)
{
    struct sink *k = arg;
    assert_true(n > 0);
    if (k->len + n > k->cap) {
        k->cap = (k->len + n) * 2;
        k->buf = realloc(k->buf, k->cap);
        assert_non_null(k->buf);
    }
    memcpy(k->buf + k->len, d, n);
    k->len += n;
    k->calls++;
}

struct result {
    struct tg_usage usage;
    bool overflow;
    struct sink out;
};

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Feeds `in` in pieces: mode 0 whole, 1 one byte at a time, 2 split at `at`,
 * 3 random pieces from `seed`. */
static void run_scan(bool sse, bool strip, const char *in, size_t n, int mode, size_t at,
                     uint64_t seed, struct result *r)
{
    struct tg_scan s;
    memset(r, 0, sizeof *r);
    tg_scan_init(&s, sse, strip, sink_emit, &r->out);
    size_t i = 0;
    while (i < n) {
        size_t k = n - i;
        if (mode == 1) k = 1;
        if (mode == 2) k = i < at ? at - i : n - i;
        if (mode == 3) k = 1 + rng_next(&seed) % (n / 3 + 2);
        if (k > n - i) k = n - i;
        tg_scan_feed(&s, in + i, k);
        i += k;
    }
    tg_scan_finish(&s);
    r->usage = s.usage;
    r->overflow = s.overflow;
    tg_scan_deinit(&s);
    assert_null(s.buf);
}

static void same_result(const struct result *a, const struct result *b, const char *how)
{
    const struct tg_usage *x = &a->usage, *y = &b->usage;
    if (x->prompt_tokens != y->prompt_tokens || x->completion_tokens != y->completion_tokens ||
        x->total_tokens != y->total_tokens || x->have_tokens != y->have_tokens ||
        x->video_seconds != y->video_seconds || x->width != y->width || x->height != y->height ||
        x->have_video != y->have_video || x->content_chars != y->content_chars ||
        a->overflow != b->overflow)
        fail_msg("usage differs when fed %s", how);
    if (a->out.len != b->out.len || (a->out.len && memcmp(a->out.buf, b->out.buf, a->out.len) != 0))
        fail_msg("emitted bytes differ when fed %s (%zu vs %zu bytes)", how, a->out.len,
                 b->out.len);
}

/* Scans `in` whole, then one byte at a time, at every two-piece split and in
 * random pieces; every way must give the same usage and emitted bytes. */
static struct result scan(bool sse, bool strip, const char *in, size_t n)
{
    struct result whole, other;
    char how[64];
    run_scan(sse, strip, in, n, 0, 0, 0, &whole);
    if (!strip) {
        /* without stripping every byte passes as is */
        assert_int_equal(whole.out.len, n);
        if (n > 0) assert_memory_equal(whole.out.buf, in, n);
    }
    run_scan(sse, strip, in, n, 1, 0, 0, &other);
    same_result(&whole, &other, "one byte at a time");
    free(other.out.buf);
    for (size_t at = 1; at < n; at++) {
        run_scan(sse, strip, in, n, 2, at, 0, &other);
        snprintf(how, sizeof how, "split at %zu", at);
        same_result(&whole, &other, how);
        free(other.out.buf);
    }
    for (uint64_t seed = 1; seed <= 64; seed++) {
        run_scan(sse, strip, in, n, 3, 0, seed * 0x9E3779B97F4A7C15ULL, &other);
        snprintf(how, sizeof how, "in random pieces (seed %llu)", (unsigned long long)seed);
        same_result(&whole, &other, how);
        free(other.out.buf);
    }
    return whole;
}

static struct result scan_str(bool sse, bool strip, const char *in)
{
    return scan(sse, strip, in, strlen(in));
}

static void expect_out(struct result *r, const char *want)
{
    if (r->out.len != strlen(want) || (r->out.len && memcmp(r->out.buf, want, r->out.len) != 0))
        fail_msg("emitted \"%.*s\", expected \"%s\"", (int)r->out.len, r->out.buf ? r->out.buf : "",
                 want);
    free(r->out.buf);
    r->out.buf = NULL;
}

static const char chat_reply[] =
    "{\n  \"id\": \"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\n  \"object\": \"chat.completion\",\n"
    "  \"created\": 1741569952,\n  \"model\": \"gpt-4.1-2025-04-14\",\n  \"choices\": [\n    {\n"
    "      \"index\": 0,\n      \"message\": {\n        \"role\": \"assistant\",\n"
    "        \"content\": \"Hello! How can I assist you today?\",\n        \"refusal\": null,\n"
    "        \"annotations\": []\n      },\n      \"logprobs\": null,\n"
    "      \"finish_reason\": \"stop\"\n    }\n  ],\n  \"usage\": {\n    \"prompt_tokens\": 19,\n"
    "    \"completion_tokens\": 10,\n    \"total_tokens\": 29,\n    \"prompt_tokens_details\": {\n"
    "      \"cached_tokens\": 0,\n      \"audio_tokens\": 0\n    },\n"
    "    \"completion_tokens_details\": {\n      \"reasoning_tokens\": 0\n    }\n  },\n"
    "  \"service_tier\": \"default\"\n}\n";

static void test_scan_json_usage(void **state)
{
    struct result r = scan_str(false, false, chat_reply);
    assert_true(r.usage.have_tokens);
    assert_int_equal(r.usage.prompt_tokens, 19);
    assert_int_equal(r.usage.completion_tokens, 10);
    assert_int_equal(r.usage.total_tokens, 29);
    assert_false(r.usage.have_video);
    assert_int_equal(r.usage.content_chars, 34);
    assert_false(r.overflow);
    free(r.out.buf);

    /* total missing: prompt + completion; Responses-style names */
    r = scan_str(false, false, "{\"usage\":{\"input_tokens\":5,\"output_tokens\":7}}");
    assert_true(r.usage.have_tokens);
    assert_int_equal(r.usage.total_tokens, 12);
    free(r.out.buf);
    /* embeddings */
    r = scan_str(
        false, false,
        "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":"
        "[0.0023,-0.0093,1e-5]}],\"model\":\"text-embedding-3-small\",\"usage\":{"
        "\"prompt_tokens\":8,\"total_tokens\":8}}");
    assert_int_equal(r.usage.total_tokens, 8);
    free(r.out.buf);
    /* no usage, null usage, an error, not JSON, a nested usage */
    const char *none[] = {"{\"choices\":[{\"text\":\"abc\"}]}",
                          "{\"usage\":null}",
                          "{\"error\":{\"message\":\"bad\",\"usage\":{\"total_tokens\":3}}}",
                          "<html>502 Bad Gateway</html>",
                          "",
                          "{\"usage\":{\"total_tokens\":"};
    for (size_t i = 0; i < TG_ARRAY_LEN(none); i++) {
        r = scan_str(false, false, none[i]);
        assert_false(r.usage.have_tokens);
        free(r.out.buf);
    }
    r = scan_str(false, false, none[0]);
    assert_int_equal(r.usage.content_chars, 3);
    free(r.out.buf);
}

static void test_scan_json_small_alloc(void **state)
{
    struct tg_scan s;
    size_t n = strlen(chat_reply);
    tg_scan_init(&s, false, false, NULL, NULL);
    tg_scan_feed(&s, chat_reply, n);
    tg_scan_finish(&s);
    assert_int_equal(s.cap, n); /* one piece: exactly its size */
    assert_int_equal(s.usage.total_tokens, 29);
    tg_scan_deinit(&s);
    tg_scan_init(&s, false, false, NULL, NULL);
    for (size_t i = 0; i < n; i += 100)
        tg_scan_feed(&s, chat_reply + i, n - i < 100 ? n - i : 100);
    tg_scan_finish(&s);
    assert_true(s.cap < 2 * n);
    assert_int_equal(s.usage.total_tokens, 29);
    tg_scan_deinit(&s);
}

static void test_scan_json_overflow(void **state)
{
    /* a big embeddings reply: usage after more than TG_SCAN_MAX_JSON bytes */
    const char head[] = "{\"object\":\"list\",\"data\":[";
    const char item[] = "{\"object\":\"embedding\",\"embedding\":[0.0023064255,-0.009327292,"
                        "0.015797347,\"usage\\\":{\\\"total_tokens\\\":1}\"]},";
    const char tail[] = "{}],\"model\":\"m\",\"usage\":{\"prompt_tokens\":70000,"
                        "\"total_tokens\":70000}}";
    size_t reps = TG_SCAN_MAX_JSON / (sizeof item - 1) + 1000;
    size_t n = sizeof head - 1 + reps * (sizeof item - 1) + sizeof tail - 1;
    char *body = malloc(n);
    assert_non_null(body);
    char *p = body;
    memcpy(p, head, sizeof head - 1), p += sizeof head - 1;
    for (size_t i = 0; i < reps; i++)
        memcpy(p, item, sizeof item - 1), p += sizeof item - 1;
    memcpy(p, tail, sizeof tail - 1);
    size_t chunks[] = {16384, 1000, 70000, 3 * TG_SCAN_MAX_JSON};
    for (int variant = 0; variant < 2; variant++) {
        if (variant == 1) {
            /* usage 100 KiB before the end: past the kept tail, whatever the pieces */
            size_t pad = 100 * 1024;
            body = realloc(body, n + pad + 16);
            assert_non_null(body);
            memcpy(body + n - 1, ",\"pad\":\"", 8);
            memset(body + n + 7, 'x', pad);
            memcpy(body + n + 7 + pad, "\"}", 2);
            n += 9 + pad;
        }
        for (size_t c = 0; c < TG_ARRAY_LEN(chunks); c++) {
            struct tg_scan s;
            tg_scan_init(&s, false, false, NULL, NULL);
            for (size_t i = 0; i < n; i += chunks[c])
                tg_scan_feed(&s, body + i, n - i < chunks[c] ? n - i : chunks[c]);
            tg_scan_finish(&s);
            assert_true(s.overflow);
            assert_true(s.cap <= 256 * 1024);
            assert_int_equal(s.usage.have_tokens, variant == 0);
            assert_int_equal(s.usage.total_tokens, variant == 0 ? 70000 : 0);
            tg_scan_deinit(&s);
        }
    }
    free(body);
}

static void test_scan_video_reply(void **state)
{
    struct result r =
        scan_str(false, false,
                 "{\"id\":\"video_123\",\"object\":\"video\",\"model\":\"sora-2\","
                 "\"status\":\"queued\",\"progress\":0,\"created_at\":1712697600,"
                 "\"size\":\"1920x1080\",\"seconds\":\"8\",\"quality\":\"standard\"}");
    assert_true(r.usage.have_video);
    assert_true(r.usage.video_seconds == 8.0);
    assert_int_equal(r.usage.width, 1920);
    assert_int_equal(r.usage.height, 1080);
    assert_false(r.usage.have_tokens);
    free(r.out.buf);
    r = scan_str(false, false, "{\"seconds\":4.5}");
    assert_true(r.usage.have_video);
    assert_true(r.usage.video_seconds == 4.5);
    assert_int_equal(r.usage.width, 0);
    free(r.out.buf);
    r = scan_str(false, false, "{\"seconds\":\"soon\",\"size\":\"1x1\"}");
    assert_false(r.usage.have_video);
    free(r.out.buf);
}

/* An OpenAI chat stream with include_usage: content "Hello" + " 😀\"" */
#define CHUNK(x)                                                                                   \
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"             \
    "\"model\":\"gpt-4o\",\"choices\":[" x "],\"usage\":null}"
#define USAGE_EV                                                                                   \
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"             \
    "\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,"                          \
    "\"completion_tokens\":3,\"total_tokens\":12}}"
#define EV1                                                                                        \
    CHUNK("{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":"    \
          "null}")
#define EV2 CHUNK("{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}")
#define EV3                                                                                        \
    CHUNK("{\"index\":0,\"delta\":{\"content\":\" \\ud83d\\ude00\\\"\"},\"finish_reason\":null}")
#define EV4 CHUNK("{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}")
#define DONE "data: [DONE]"

static void check_stream_usage(const struct result *r)
{
    assert_true(r->usage.have_tokens);
    assert_int_equal(r->usage.prompt_tokens, 9);
    assert_int_equal(r->usage.completion_tokens, 3);
    assert_int_equal(r->usage.total_tokens, 12);
    assert_int_equal(r->usage.content_chars, 8);
}

static void test_sse_usage_strip(void **state)
{
    const char *in = EV1 "\n\n" EV2 "\n\n" EV3 "\n\n" EV4 "\n\n" USAGE_EV "\n\n" DONE "\n\n";
    struct result r = scan_str(true, false, in);
    check_stream_usage(&r);
    free(r.out.buf);
    r = scan_str(true, true, in);
    check_stream_usage(&r);
    expect_out(&r, EV1 "\n\n" EV2 "\n\n" EV3 "\n\n" EV4 "\n\n" DONE "\n\n");
}

static void test_sse_crlf(void **state)
{
    const char *in = EV1 "\r\n\r\n" EV2 "\r\n\r\n" EV3 "\r\n\r\n" EV4 "\r\n\r\n" USAGE_EV
                         "\r\n\r\n" DONE "\r\n\r\n";
    struct result r = scan_str(true, false, in);
    check_stream_usage(&r);
    free(r.out.buf);
    r = scan_str(true, true, in);
    check_stream_usage(&r);
    expect_out(&r, EV1 "\r\n\r\n" EV2 "\r\n\r\n" EV3 "\r\n\r\n" EV4 "\r\n\r\n" DONE "\r\n\r\n");
    /* blank events after a CRLF-ended event stay events of their own */
    r = scan_str(true, true, EV2 "\r\n\r\n\r\n" USAGE_EV "\r\n\r\n\r\n\n" DONE "\r\n\r\n");
    assert_int_equal(r.usage.total_tokens, 12);
    expect_out(&r, EV2 "\r\n\r\n\r\n\r\n\n" DONE "\r\n\r\n");
    /* mixed line ends within one stream */
    in = EV2 "\r\n\n" USAGE_EV "\n\r\n" DONE "\n\n";
    r = scan_str(true, true, in);
    assert_int_equal(r.usage.total_tokens, 12);
    expect_out(&r, EV2 "\r\n\n" DONE "\n\n");
}

static void test_sse_multiline_and_fields(void **state)
{
    const char *in = ": keep-alive comment\n\n"
                     "event: message\nid: 7\nretry: 1000\n" EV2 "\n\n"
                     "data: {\"choices\":[],\n"
                     "data:\"usage\":{\"prompt_tokens\":1,\n"
                     ": a comment between data lines\n"
                     "data:  \"completion_tokens\":2,\"total_tokens\":3}}\n\n"
                     "data\n\n"
                     "datax: {\"usage\":{\"total_tokens\":99},\"choices\":[]}\n\n" DONE "\n\n";
    struct result r = scan_str(true, true, in);
    assert_true(r.usage.have_tokens);
    assert_int_equal(r.usage.prompt_tokens, 1);
    assert_int_equal(r.usage.completion_tokens, 2);
    assert_int_equal(r.usage.total_tokens, 3);
    assert_int_equal(r.usage.content_chars, 5);
    expect_out(&r, ": keep-alive comment\n\nevent: message\nid: 7\nretry: 1000\n" EV2 "\n\n"
                   "data\n\n"
                   "datax: {\"usage\":{\"total_tokens\":99},\"choices\":[]}\n\n" DONE "\n\n");
}

static void test_sse_kept_events(void **state)
{
    /* usage with non-empty choices (vLLM continuous usage) is read, kept, and the last one wins */
    const char *in =
        "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}],\"usage\":{\"prompt_tokens\":4,"
        "\"completion_tokens\":1,\"total_tokens\":5}}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"c\"}}],\"usage\":{\"prompt_tokens\":4,"
        "\"completion_tokens\":2,\"total_tokens\":6}}\n\n"
        "data: {\"choices\":[],\"usage\":null}\n\n";
    struct result r = scan_str(true, true, in);
    assert_int_equal(r.usage.total_tokens, 6);
    assert_int_equal(r.usage.content_chars, 3);
    expect_out(&r, in);
}

static void test_sse_without_usage(void **state)
{
    /* completions stream, no usage: the text is counted for the fallback */
    const char *in =
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"text\":"
        "\"This is\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"text\":"
        "\" a test\",\"index\":0},{\"text\":\"!\",\"index\":1}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
        "{\"arguments\":\"{\\\"a\\\":1}\"}}]}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n" DONE "\n\n";
    struct result r = scan_str(true, true, in);
    assert_false(r.usage.have_tokens);
    assert_int_equal(r.usage.content_chars, 7 + 7 + 1 + 7 + 3);
    expect_out(&r, in);
}

static void test_sse_partial_at_finish(void **state)
{
    /* a stream cut before its blank line: emitted as is, still read */
    const char *in = EV2 "\n\n" USAGE_EV "\n";
    struct result r = scan_str(true, true, in);
    assert_int_equal(r.usage.total_tokens, 12);
    expect_out(&r, in);
    r = scan_str(true, true, EV2 "\n\n" USAGE_EV);
    assert_int_equal(r.usage.total_tokens, 12);
    expect_out(&r, EV2 "\n\n" USAGE_EV);
    r = scan_str(true, true, "\n\n\r\n");
    expect_out(&r, "\n\n\r\n");
}

static void test_sse_oversized_event(void **state)
{
    /* an event beyond the event buffer passes through unparsed, nothing lost */
    size_t big = 1536 * 1024;
    const char pre[] = "data: {\"choices\":[{\"delta\":{\"content\":\"";
    const char post[] = "\"}}]}\n\n" USAGE_EV "\n\n" DONE "\n\n";
    size_t n = sizeof pre - 1 + big + sizeof post - 1;
    char *in = malloc(n);
    assert_non_null(in);
    memcpy(in, pre, sizeof pre - 1);
    memset(in + sizeof pre - 1, 'x', big);
    memcpy(in + sizeof pre - 1 + big, post, sizeof post - 1);
    size_t chunks[] = {4096, 777777, n};
    for (size_t c = 0; c < TG_ARRAY_LEN(chunks); c++) {
        struct result r;
        memset(&r, 0, sizeof r);
        struct tg_scan s;
        tg_scan_init(&s, true, true, sink_emit, &r.out);
        for (size_t i = 0; i < n; i += chunks[c])
            tg_scan_feed(&s, in + i, n - i < chunks[c] ? n - i : chunks[c]);
        tg_scan_finish(&s);
        assert_true(s.overflow);
        assert_true(s.cap <= 2 * 1024 * 1024);
        assert_int_equal(s.usage.total_tokens, 12);
        tg_scan_deinit(&s);
        size_t want = n - (sizeof USAGE_EV - 1 + 2);
        assert_int_equal(r.out.len, want);
        assert_memory_equal(r.out.buf, in, sizeof pre - 1 + big + 7);
        free(r.out.buf);
    }
    free(in);
}

/* ---- settling ---- */

static void test_actual(void **state)
{
    struct tg_request_info info;
    struct tg_usage u;
    struct tg_cost c;
    memset(&info, 0, sizeof info);
    info.prompt_tokens_est = 10;

    memset(&u, 0, sizeof u);
    tg_cost_actual(TG_COST_REQUESTS, CPT, &info, &u, &c);
    assert_int_equal(c.u[TG_UNIT_REQUESTS], TG_MICRO);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 0);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 0);

    u.have_tokens = true;
    u.prompt_tokens = 9;
    u.completion_tokens = 3;
    u.total_tokens = 12;
    tg_cost_actual(TG_COST_TOKENS, CPT, &info, &u, &c);
    assert_int_equal(c.u[TG_UNIT_REQUESTS], TG_MICRO);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 12 * TG_MICRO);
    u.total_tokens = 0; /* total missing */
    tg_cost_actual(TG_COST_TOKENS, CPT, &info, &u, &c);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 12 * TG_MICRO);

    /* no usage: estimate + streamed text */
    memset(&u, 0, sizeof u);
    u.content_chars = 9;
    tg_cost_actual(TG_COST_TOKENS, CPT, &info, &u, &c);
    assert_int_equal(c.u[TG_UNIT_TOKENS], (10 + 3) * TG_MICRO);
    u.content_chars = 0;
    tg_cost_actual(TG_COST_TOKENS, CPT, &info, &u, &c);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 10 * TG_MICRO);

    /* from a real stream */
    struct result r = scan_str(true, false, EV2 "\n\n" EV3 "\n\n" DONE "\n\n");
    tg_cost_actual(TG_COST_TOKENS, CPT, &info, &r.usage, &c);
    assert_int_equal(c.u[TG_UNIT_TOKENS], (10 + 2) * TG_MICRO); /* 8 chars */
    free(r.out.buf);

    /* video: the reply's numbers, else the request's */
    struct tg_cost e;
    char err[TG_ERR_LEN];
    const char *req = "{\"seconds\":\"4\",\"size\":\"1280x720\"}";
    assert_int_equal(
        tg_cost_estimate(TG_COST_VIDEO, CPT, DEF_MAX, req, strlen(req), &e, &info, err), 0);
    memset(&u, 0, sizeof u);
    tg_cost_actual(TG_COST_VIDEO, CPT, &info, &u, &c);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 4 * TG_MICRO);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], e.u[TG_UNIT_VIDEO_SECONDS]);
    assert_int_equal(c.u[TG_UNIT_TOKENS], 0);
    r = scan_str(false, false, "{\"object\":\"video\",\"seconds\":\"8\",\"size\":\"1920x1080\"}");
    tg_cost_actual(TG_COST_VIDEO, CPT, &info, &r.usage, &c);
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 18 * TG_MICRO);
    free(r.out.buf);
    r = scan_str(false, false, "{\"object\":\"video\",\"seconds\":2.5}");
    tg_cost_actual(TG_COST_VIDEO, CPT, &info, &r.usage, &c);
    /* 2.5 s at the requested 1280x720: a started second counts whole, as in the
     * estimate, so a settle never refunds the estimate's own rounding. */
    assert_int_equal(c.u[TG_UNIT_VIDEO_SECONDS], 3 * TG_MICRO);
    free(r.out.buf);
}

/* Long strings: escapes and multi-byte characters on every side of 16-byte
 * boundaries; member names given with escapes; repeated members. */
static void test_estimate_long_strings_and_keys(void **state)
{
    struct tg_request_info info;
    char body[512];
    /* 40 x "a\"é" (3 code points each, 4 bytes and an escape) at shifts 0..15 */
    for (int shift = 0; shift < 16; shift++) {
        int n = snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"%.*s",
                         shift, "bbbbbbbbbbbbbbbb");
        for (int i = 0; i < 40; i++)
            n += snprintf(body + n, sizeof body - (size_t)n, "a\\\"\xc3\xa9");
        snprintf(body + n, sizeof body - (size_t)n, "\"}],\"max_tokens\":1}");
        (void)est_full(TG_COST_TOKENS, 1, DEF_MAX, body, strlen(body), &info);
        assert_int_equal(info.prompt_tokens_est, shift + 120);
    }
    /* an escaped member name is the same name; the last of a repeated member counts */
    const char *b = "{\"m\\u0065ssages\":[{\"content\":\"abcd\",\"cont\\u0065nt\":\"efghijkl\"}],"
                    "\"max_tokens\":1,\"max_tokens\":2}";
    assert_int_equal(tokens_of(est_full(TG_COST_TOKENS, 4, DEF_MAX, b, strlen(b), &info)), 2 + 2);
    b = "{\"messages\":[{\"content\":\"abcd\"}],\"messages\":[],\"max_tokens\":1}";
    assert_int_equal(tokens_of(est_full(TG_COST_TOKENS, 4, DEF_MAX, b, strlen(b), &info)), 1);
    /* a name that only looks alike is another member */
    b = "{\"messages\":[{\"content\":\"abcd\",\"\\u00e7ontent\":\"efghijkl\"}],\"max_tokens\":1}";
    assert_int_equal(tokens_of(est_full(TG_COST_TOKENS, 4, DEF_MAX, b, strlen(b), &info)), 1 + 1);
    b = "{\"model\":\"gpt\\u002d4o\",\"model \":\"x\",\"stream\":true}";
    (void)est_full(TG_COST_TOKENS, 4, DEF_MAX, b, strlen(b), &info);
    assert_string_equal(info.model, "gpt-4o");
    assert_true(info.stream);
    /* members of nested objects are not the top level's */
    b = "{\"metadata\":{\"max_tokens\":7,\"model\":\"y\"},\"model\":\"z\"}";
    (void)est_full(TG_COST_TOKENS, 4, 3, b, strlen(b), &info);
    assert_string_equal(info.model, "z");
    assert_int_equal(info.prompt_tokens_est, 0);
    /* the second message is not an object: named after all the walking */
    est_err(TG_COST_TOKENS, "{\"messages\":[{\"content\":\"x\",\"a\":[1,{}]},1.5e3]}",
            "Invalid type for 'messages[1]': expected an object, but got a decimal number");
    est_err(TG_COST_TOKENS, "{\"messages\":[{\"content\":{\"a\":1},\"content\":7}]}",
            "Invalid type for 'messages[0].content': expected a string or an array, but got an "
            "integer");
}

/* The rewrite for a body the estimate has accepted is the checked one's. */
static void test_request_usage_valid(void **state)
{
    const char *bodies[] = {
        "{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        "  {\n  \"stream\" : true\n}\n",
        "{}",
        "{\"stream\":true,\"stream_options\":{\"include_usage\":false},\"top_p\":0.9}",
        "{\"stream_options\":{},\"a\":1}",
        "{\"stream_options\":null,\"stream\":true}",
        "{\"stream_opti\\u006fns\":{\"x\":1},\"stream\":true}",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(bodies); i++) {
        size_t n = strlen(bodies[i]), la = 0, lb = 0;
        struct tg_request_info info;
        (void)est_full(TG_COST_TOKENS, 4, DEF_MAX, bodies[i], n, &info);
        char *a = tg_cost_request_usage(bodies[i], n, &la);
        char *b = tg_cost_request_usage_valid(bodies[i], n, &lb);
        assert_non_null(a);
        assert_non_null(b);
        assert_int_equal(la, lb);
        assert_memory_equal(a, b, la);
        free(a);
        free(b);
    }
    size_t n;
    assert_null(tg_cost_request_usage_valid("", 0, &n));
    assert_null(tg_cost_request_usage_valid("  ", 2, &n));
    assert_null(tg_cost_request_usage_valid("[1]", 3, &n));
}

/* Where `usage` is and is not read from; replies of an odd shape are read as
 * before, member by member up to where they stop making sense. */
static void test_scan_json_shapes(void **state)
{
    struct result r;
    /* escapes and multi-byte text across 16-byte boundaries, an escaped name */
    r = scan_str(false, false,
                 "{\"choices\":[{\"message\":{\"content\":\"0123456789abcde\\\"\\\\\xc3\xa9\\u00e9"
                 "\\ud83d\\ude00\xf0\x9f\x98\x80xyz0123456789\",\"tool_calls\":[{\"function\":{"
                 "\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}]}}],"
                 "\"us\\u0061ge\":{\"prompt_tokens\":1,\"completion_tokens\":2}}");
    assert_true(r.usage.have_tokens);
    assert_int_equal(r.usage.total_tokens, 3);
    assert_int_equal(r.usage.content_chars, 15 + 6 + 13 + 7);
    free(r.out.buf);
    /* repeated: the last usage counts, the text of every choices counts */
    r = scan_str(false, false,
                 "{\"usage\":{\"total_tokens\":5},\"choices\":[{\"text\":\"ab\"}],\"usage\":{"
                 "\"total_tokens\":9},\"choices\":[{\"text\":\"cde\"}]}");
    assert_int_equal(r.usage.total_tokens, 9);
    assert_int_equal(r.usage.content_chars, 5);
    free(r.out.buf);
    /* "usage" inside a string, or deeper than the top: not read; response.usage: read */
    const char *none[] = {
        "{\"note\":\"\\\"usage\\\":{\\\"total_tokens\\\":7}\",\"x\":1}",
        "{\"choices\":[{\"usage\":{\"total_tokens\":7}}]}",
        "{\"data\":[{\"usage\":{\"total_tokens\":7}}],\"usage\":7}",
        "[{\"usage\":{\"total_tokens\":7}}]",
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(none); i++) {
        r = scan_str(false, false, none[i]);
        assert_false(r.usage.have_tokens);
        free(r.out.buf);
    }
    r = scan_str(false, false, "{\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":4}}}");
    assert_true(r.usage.have_tokens);
    assert_int_equal(r.usage.total_tokens, 4);
    free(r.out.buf);
    /* odd shapes: what comes before the point where the reading stops counts */
    const struct {
        const char *in;
        bool have;
        int64_t total, chars;
    } odd[] = {
        {"{\"usage\":{\"total_tokens\":4} \"x\":1}", true, 4, 0},
        {"{,\"usage\":{\"total_tokens\":4}}", true, 4, 0},
        {"{\"usage\":{\"total_tokens\":4},}", true, 4, 0},
        {"{\"usage\":{\"total_tokens\":4,}", true, 4, 0},
        {"{\"choices\":[{\"text\":\"ab\"},],\"usage\":{\"total_tokens\":4}}", true, 4, 2},
        {"{\"choices\":[{\"text\":\"ab\"}}],\"usage\":{\"total_tokens\":4}}", false, 0, 2},
        {"{\"choices\":[{\"text\":\"ab\"}]],\"usage\":{\"total_tokens\":4}}", false, 0, 2},
        {"{\"choices\":[{\"text\":\"ab\" \"delta\":{\"content\":\"c\"}}],\"usage\":{}}", true, 0, 3},
        {"{\"usage\":{\"prompt_tokens\":2 \"completion_tokens\":3}, \"choices\":[", true, 5, 0},
    };
    for (size_t i = 0; i < TG_ARRAY_LEN(odd); i++) {
        r = scan_str(false, false, odd[i].in);
        if (r.usage.have_tokens != odd[i].have || r.usage.total_tokens != odd[i].total ||
            r.usage.content_chars != odd[i].chars)
            fail_msg("%s: have %d total %lld chars %lld", odd[i].in, r.usage.have_tokens,
                     (long long)r.usage.total_tokens, (long long)r.usage.content_chars);
        free(r.out.buf);
    }
    /* SSE: a usage-only chunk of an odd shape is still dropped when stripping */
    r = scan_str(true, true,
                 "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"
                 "data: {\"choices\":[],\"usage\":{\"total_tokens\":3} ,}\n\n");
    assert_int_equal(r.usage.total_tokens, 3);
    assert_int_equal(r.usage.content_chars, 2);
    expect_out(&r, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_string),
        cmocka_unit_test(test_chat_parts),
        cmocka_unit_test(test_chat_completion_part),
        cmocka_unit_test(test_chat_info),
        cmocka_unit_test(test_model_truncated),
        cmocka_unit_test(test_completions),
        cmocka_unit_test(test_embeddings),
        cmocka_unit_test(test_utf8_counting),
        cmocka_unit_test(test_video),
        cmocka_unit_test(test_video_multipart),
        cmocka_unit_test(test_requests_route),
        cmocka_unit_test(test_estimate_errors),
        cmocka_unit_test(test_json_strictness),
        cmocka_unit_test(test_request_usage),
        cmocka_unit_test(test_scan_json_usage),
        cmocka_unit_test(test_scan_json_small_alloc),
        cmocka_unit_test(test_scan_json_overflow),
        cmocka_unit_test(test_scan_video_reply),
        cmocka_unit_test(test_sse_usage_strip),
        cmocka_unit_test(test_sse_crlf),
        cmocka_unit_test(test_sse_multiline_and_fields),
        cmocka_unit_test(test_sse_kept_events),
        cmocka_unit_test(test_sse_without_usage),
        cmocka_unit_test(test_sse_partial_at_finish),
        cmocka_unit_test(test_sse_oversized_event),
        cmocka_unit_test(test_actual),
        cmocka_unit_test(test_estimate_long_strings_and_keys),
        cmocka_unit_test(test_request_usage_valid),
        cmocka_unit_test(test_scan_json_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
