/* Video sizes and lengths read from text: "WxH", and seconds as a plain decimal. */
#include <stdlib.h>
#include <string.h>
#include "units.h"

/* "WxH", each side 1..MAX_VIDEO_SIDE, nothing else. */
bool parse_size(const char *s, size_t n, int *w, int *h)
{
    int v[2] = {0, 0};
    size_t i = 0;
    for (int k = 0; k < 2; k++) {
        size_t start = i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 6)
            v[k] = v[k] * 10 + (s[i++] - '0');
        if (i == start || v[k] < 1 || v[k] > MAX_VIDEO_SIDE) return false;
        if (k == 0) {
            if (i >= n || (s[i] != 'x' && s[i] != 'X')) return false;
            i++;
        }
    }
    if (i != n) return false;
    *w = v[0];
    *h = v[1];
    return true;
}

/* A plain decimal ("8", "4.5") in [0, MAX_VIDEO_SECONDS]. */
bool parse_seconds(const char *s, size_t n, double *out)
{
    char tmp[32];
    size_t digits = 0, dots = 0;
    if (n == 0 || n >= sizeof tmp) return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9')
            digits++;
        else if (s[i] == '.' && dots++ == 0)
            ;
        else
            return false;
    }
    if (digits == 0) return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    double d = strtod(tmp, NULL);
    if (!(d >= 0 && d <= MAX_VIDEO_SECONDS)) return false;
    *out = d;
    return true;
}
