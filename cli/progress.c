/*
 * The progress display (see progress.h). The percentage line is throttled to
 * one update per whole percent, the bar to ten redraws a second, so a big
 * image does not flood the terminal or cost time.
 */
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "fmt.h"
#include "progress.h"

/* A terminal's bar waits this long before it appears unasked. */
#define AUTO_DELAY_SECS 1.0
/* Shortest time between two redraws of the bar. */
#define REDRAW_SECS 0.1

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int term_columns(void)
{
    struct winsize ws;

    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
        return ws.ws_col;
    return 80;
}

/* qemu-img's "    (42.00/100%)" line. */
static void show_percent(cli_progress *pr, int hundredths)
{
    printf("    (%d.%02d/100%%)\r", hundredths / 100, hundredths % 100);
    fflush(stdout);
    pr->last_shown = hundredths;
    pr->visible = true;
}

/* "[=====>    ]  42%  1.2 GiB / 2.9 GiB  310 MiB/s", cleared to the end of the line. */
static void draw_bar(cli_progress *pr, double t)
{
    char done_s[CLI_SIZE_STR_MAX], total_s[CLI_SIZE_STR_MAX], rate_s[CLI_SIZE_STR_MAX];
    char text[128], bar[64];
    uint64_t total = pr->total ? pr->total : 1, done = pr->done < total ? pr->done : total;
    double secs = t - pr->start;
    int pct = (int)((double)done * 100.0 / (double)total), width, fill;

    if (pr->total == 0)
        pct = 100;
    snprintf(text, sizeof(text), "%3d%%  %s / %s", pct, cli_fmt_size(pr->done, done_s),
             cli_fmt_size(pr->total, total_s));
    if (secs >= 0.2) {
        size_t n = strlen(text);

        snprintf(text + n, sizeof(text) - n, "  %s/s",
                 cli_fmt_size((uint64_t)((double)pr->done / secs), rate_s));
    }
    width = term_columns() - (int)strlen(text) - 5;
    if (width > (int)sizeof(bar) - 1)
        width = (int)sizeof(bar) - 1;
    if (width >= 10) {
        fill = (int)((double)width * pct / 100.0);
        memset(bar, '=', (size_t)fill);
        memset(bar + fill, ' ', (size_t)(width - fill));
        if (fill > 0 && fill < width)
            bar[fill - 1] = '>';
        bar[width] = '\0';
        printf("\r[%s]  %s\033[K", bar, text);
    } else {
        printf("\r%s\033[K", text);
    }
    fflush(stdout);
    pr->visible = true;
    pr->last_draw = t;
}

void cli_progress_begin(cli_progress *pr, bool forced, bool allowed)
{
    memset(pr, 0, sizeof(*pr));
    pr->last_shown = -1;
    pr->forced = forced;
    pr->bar = isatty(STDOUT_FILENO);
    pr->enabled = allowed && (forced || pr->bar);
    pr->start = now();
    if (pr->enabled && !pr->bar)
        show_percent(pr, 0);
}

void cli_progress_update(uint64_t done, uint64_t total, void *payload)
{
    cli_progress *pr = payload;
    int hundredths;
    double t;

    if (!pr->enabled)
        return;
    if (done < pr->done) {
        /* A new step copies from 0: restart the line and the rate. */
        pr->start = now();
        pr->last_shown = -1;
    }
    pr->done = done;
    pr->total = total;
    if (pr->bar) {
        t = now();
        if (!pr->visible && !pr->forced && t - pr->start < AUTO_DELAY_SECS)
            return;
        if (pr->visible && t - pr->last_draw < REDRAW_SECS && done < total)
            return;
        draw_bar(pr, t);
        return;
    }
    if (pr->qemu_steps) {
        /* As qemu-img: the percent as a float, printed rounded to two places. */
        float cur = total == 0 || done >= total ? 100.0f
                                                : (float)(100.0 * (double)done / (double)total);
        if (cur > pr->last_pct + 1.0f || cur < pr->last_pct - 1.0f || cur == 100.0f || cur == 0.0f) {
            printf("    (%3.2f/100%%)\r", (double)cur);
            fflush(stdout);
            pr->last_pct = cur;
            pr->last_shown = cur == 100.0f ? 10000 : (int)(cur * 100.0f);
            pr->visible = true;
        }
        return;
    }
    if (total == 0 || done >= total)
        hundredths = 10000;
    else
        hundredths = (int)((double)done * 10000.0 / (double)total);
    if (hundredths == pr->last_shown)
        return;
    if (hundredths < 10000 && pr->last_shown >= 0 && hundredths - pr->last_shown < 100)
        return;
    show_percent(pr, hundredths);
}

void cli_progress_complete(cli_progress *pr)
{
    if (!pr->enabled)
        return;
    if (pr->bar) {
        if (pr->visible) {
            if (pr->done < pr->total)
                pr->done = pr->total;
            draw_bar(pr, now());
            putchar('\n');
            fflush(stdout);
            pr->visible = false;
            pr->enabled = false;
        }
        return;
    }
    if (pr->last_shown != 10000)
        show_percent(pr, 10000);
}

void cli_progress_end(cli_progress *pr)
{
    if (!pr->enabled)
        return;
    cli_progress_complete(pr);
    if (!pr->bar) {
        putchar('\n');
        fflush(stdout);
    }
    pr->enabled = false;
}

void cli_progress_abort(cli_progress *pr)
{
    if (pr->enabled && pr->visible) {
        putchar('\n');
        fflush(stdout);
    }
    pr->enabled = false;
}
