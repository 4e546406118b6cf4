/*
 * The -p progress line: "    (42.00/100%)" rewritten in place with \r, as
 * qemu-img prints it. Hand cli_progress_update to the library as its
 * qcow2_progress_fn with the cli_progress as payload.
 */
#ifndef QSNAP_CLI_PROGRESS_H
#define QSNAP_CLI_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct cli_progress {
    bool enabled;    /* -p was given */
    int last_shown;  /* hundredths of a percent last printed, or -1 */
} cli_progress;

/* Start: prints "(0.00/100%)" when enabled. */
void cli_progress_begin(cli_progress *pr, bool enabled);

/* A qcow2_progress_fn; payload is a cli_progress. */
void cli_progress_update(uint64_t done, uint64_t total, void *payload);

/* Show 100% if not yet shown, leaving the cursor on the line (for a message after it). */
void cli_progress_complete(cli_progress *pr);

/* End the line (prints 100% if not yet shown, then a newline) when enabled. */
void cli_progress_end(cli_progress *pr);

#endif /* QSNAP_CLI_PROGRESS_H */
