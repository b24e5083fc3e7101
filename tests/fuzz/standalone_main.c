/* Runs a libFuzzer driver over files, without libFuzzer: the corpus as a regression test. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Reads the file into a buffer of exactly its size (so that a sanitizer sees
 * any read past the end) and runs the driver on it. */
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    uint8_t *buf = NULL;
    int rc = -1;
    if (!f || fstat(fileno(f), &st) < 0) goto out;
    buf = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
    if (!buf || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) goto out;
    LLVMFuzzerTestOneInput(buf, (size_t)st.st_size);
    rc = 0;
out:
    if (rc < 0) fprintf(stderr, "%s: cannot read\n", path);
    free(buf);
    if (f) fclose(f);
    return rc;
}

static int visible(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

int main(int argc, char **argv)
{
    size_t runs = 0;
    int failed = 0;
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "%s: no such file or directory\n", argv[i]);
            failed = 1;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            failed |= run_file(argv[i]) < 0;
            runs++;
            continue;
        }
        struct dirent **names;
        int n = scandir(argv[i], &names, visible, alphasort);
        if (n < 0) {
            fprintf(stderr, "%s: cannot list\n", argv[i]);
            failed = 1;
            continue;
        }
        for (int k = 0; k < n; k++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], names[k]->d_name);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                failed |= run_file(path) < 0;
                runs++;
            }
            free(names[k]);
        }
        free(names);
    }
    if (runs == 0) {
        fprintf(stderr, "no inputs\n");
        return 1;
    }
    printf("%zu inputs run\n", runs);
    return failed;
}
