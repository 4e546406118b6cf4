/*
 * The progress display of commands that copy data (image convert, commit,
 * rebase, compare, digest; tree commit, delete, export). Hand
 * cli_progress_update to the library as its qcow2_progress_fn with the
 * cli_progress as payload.
 *
 * Where it goes depends on standard output:
 *  - a terminal: a bar with bytes done/total and the rate, rewritten in
 *    place, e.g. "[=======>     ]  42%  1.2 GiB / 2.9 GiB  310 MiB/s". It
 *    appears by itself once an operation has run for a second, and from the
 *    start with -p;
 *  - not a terminal: nothing, unless -p asks for it; then qemu-img's line,
 *    "    (42.00/100%)" rewritten with \r, so scripts that parse qemu-img's
 *    -p output read ours the same way.
 */
#ifndef QSNAP_CLI_PROGRESS_H
#define QSNAP_CLI_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct cli_progress {
    bool enabled;    /* a display may be shown */
    bool bar;        /* the terminal bar (else qemu-img's percentage line) */
    bool forced;     /* -p: shown from the start */
    bool visible;    /* something is on the current line */
    int last_shown;  /* percentage line: hundredths of a percent last printed, or -1 */
    double start;    /* seconds (monotonic) when this run of bytes started */
    double last_draw; /* bar: when it was last drawn */
    uint64_t done;   /* bytes done at the last update */
    uint64_t total;  /* bytes in all at the last update */
    bool qemu_steps; /* percentage line: qemu-img's rule (a line past 1% from the last, and at 0 and 100 each time) */
    float last_pct;  /* qemu_steps: percent last printed */
} cli_progress;

/*
 * Start. forced: -p was given. allowed: false turns every display off
 * (-q, --json). The percentage line starts at "(0.00/100%)" at once.
 */
void cli_progress_begin(cli_progress *pr, bool forced, bool allowed);

/* A qcow2_progress_fn; payload is a cli_progress. done going backwards starts a new run. */
void cli_progress_update(uint64_t done, uint64_t total, void *payload);

/*
 * Show 100% if not yet shown. The percentage line leaves the cursor on the
 * line (qemu-img prints compare's verdict after it); the bar ends its line.
 */
void cli_progress_complete(cli_progress *pr);

/* End: 100% if not yet shown, then a newline, when anything was shown. */
void cli_progress_end(cli_progress *pr);

/* After a failure: end the line (without claiming 100%) when anything was shown. */
void cli_progress_abort(cli_progress *pr);

#endif /* QSNAP_CLI_PROGRESS_H */
