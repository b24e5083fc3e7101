/* Entry point: command line, start-up and signal handling. */
#include <stdio.h>

int main(void)
{
    printf("tollgate %s\n", TG_VERSION);
    return 0;
}
