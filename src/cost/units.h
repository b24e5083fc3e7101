/* What both sides share besides JSON: video limits, micro-unit rounding, video text forms. */
#ifndef TOLLGATE_COST_UNITS_H
#define TOLLGATE_COST_UNITS_H

#include "tollgate/cost.h"

#define MAX_VIDEO_SECONDS 3600
#define MAX_VIDEO_SIDE 8192

static inline int64_t ceil_div(int64_t a, int64_t b)
{
    return a <= 0 ? 0 : (a + b - 1) / b;
}

/* micro-units of `usec` micro-seconds of video at w x h */
static inline int64_t video_micro(int64_t usec, int w, int h)
{
    return ceil_div(usec * w * h, TG_VIDEO_REF_PIXELS);
}

/* "WxH", each side 1..MAX_VIDEO_SIDE, nothing else. */
bool parse_size(const char *s, size_t n, int *w, int *h);
/* A plain decimal ("8", "4.5") in [0, MAX_VIDEO_SECONDS]. */
bool parse_seconds(const char *s, size_t n, double *out);

#endif
