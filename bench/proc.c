/* proc.c — the server's resident memory from /proc, summed over a process and
 * its children (a --workers supervisor and its workers); the child walk is
 * cpu.c's too. */
#include "sbload.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

long rss_kib(long pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        sb_fail("cannot read %s: %s (is --pid the server's process?)", path, strerror(errno));
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    if (kib < 0)
        sb_fail("no VmRSS in %s", path);
    return kib;
}

void proc_each_child(long pid, void (*fn)(long, void *), void *arg) {
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *rp = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
        long ppid = 0;
        char st;
        if (rp && sscanf(rp + 1, " %c %ld", &st, &ppid) == 2 && ppid == pid)
            fn(atol(e->d_name), arg);
    }
    closedir(d);
}

struct sum {
    long total, n;
};

static void add_rss(long pid, void *arg) {
    struct sum *s = arg;
    s->total += rss_kib(pid);
    s->n++;
}

long rss_tree_kib(long pid, long *nproc) {
    struct sum s = {rss_kib(pid), 1};
    proc_each_child(pid, add_rss, &s);
    *nproc = s.n;
    return s.total;
}
