/*
 * which_malloc - print the path of the shared object that provides malloc()
 * in this process.  scripts/bench.sh runs it under each LD_PRELOAD to make
 * sure the allocator under test really interposes malloc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
    void *p = malloc(64);
    void *sym = dlsym(RTLD_DEFAULT, "malloc");
    Dl_info info;
    if (sym && dladdr(sym, &info) && info.dli_fname)
        printf("%s\n", info.dli_fname);
    else
        printf("unknown\n");
    free(p);
    return 0;
}
