/* What a reply says, for the scanner: its JSON objects and `usage` read into a tg_usage. */
#ifndef TOLLGATE_COST_REPLY_H
#define TOLLGATE_COST_REPLY_H

#include "tollgate/cost.h"

/* usage {prompt_tokens|input_tokens, completion_tokens|output_tokens, total_tokens} */
void read_usage(struct tg_usage *u, const char *v, const char *ve);
/* One JSON object of a reply (the whole body, or an SSE payload). Returns true
 * when it carries usage and an empty `choices` (the usage-only chunk). */
bool read_object(struct tg_usage *u, const char *p, const char *e, bool video);

#endif
