/*
 * The progress line of long-running commands (see progress.h). It is
 * throttled to one update per whole percent so a big image does not flood
 * the terminal.
 */
#include <stdio.h>

#include "progress.h"

static void show(cli_progress *pr, int hundredths)
{
    printf("    (%d.%02d/100%%)\r", hundredths / 100, hundredths % 100);
    fflush(stdout);
    pr->last_shown = hundredths;
}

void cli_progress_begin(cli_progress *pr, bool enabled)
{
    pr->enabled = enabled;
    pr->last_shown = -1;
    if (enabled)
        show(pr, 0);
}

void cli_progress_update(uint64_t done, uint64_t total, void *payload)
{
    cli_progress *pr = payload;
    int hundredths;

    if (!pr->enabled)
        return;
    if (total == 0 || done >= total)
        hundredths = 10000;
    else
        hundredths = (int)((double)done * 10000.0 / (double)total);
    if (hundredths == pr->last_shown)
        return;
    if (hundredths < 10000 && pr->last_shown >= 0 && hundredths - pr->last_shown < 100)
        return;
    show(pr, hundredths);
}

void cli_progress_complete(cli_progress *pr)
{
    if (pr->enabled && pr->last_shown != 10000)
        show(pr, 10000);
}

void cli_progress_end(cli_progress *pr)
{
    if (!pr->enabled)
        return;
    cli_progress_complete(pr);
    putchar('\n');
    fflush(stdout);
}
