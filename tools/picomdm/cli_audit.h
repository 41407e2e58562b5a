/*  cli_audit — `picomdm audit`: an append-only JSON-lines copy of the store's
 *  event log, kept complete and in order from the event plane.
 *
 *  Each line is one event, rendered by proto/pm_json.h from the map
 *      {"seq":N,"ts":MS,"name":...,"eid":...,"source":...,"data":{...}}
 *  (eid omitted when the event has none; data {} when empty). Live events and
 *  events replayed from the store (`events` request) render identically,
 *  except `ts`: a live event carries the store's publish time in its envelope,
 *  a replayed one the log's time (see docs/audit.md).
 *
 *  The file only ever receives seq last+1: an event further ahead (slow
 *  joiner, high-water-mark drop, broker restart) is a gap, filled from the
 *  store before the event is written; an event at or below last is a
 *  duplicate and skipped. On start the last line's seq is where it resumes
 *  (a torn last line, from a crash mid-write, is cut off). SIGHUP reopens the
 *  file (rotation). The pieces without the bus are public for the unit test.
 */
#ifndef CLI_AUDIT_H
#define CLI_AUDIT_H

#include "cli.h"

#include <msgpack.h>
#include <stdint.h>

typedef struct cli_audit cli_audit_t;

//  What cli_audit_write did with an event.
typedef enum {
    CLI_AUDIT_WRITTEN = 0, //  seq == last+1: appended
    CLI_AUDIT_DUPLICATE,   //  seq <= last: already in the file, skipped
    CLI_AUDIT_GAP,         //  seq > last+1: not written; fill from the store first
    CLI_AUDIT_ERROR = -1   //  could not render or write (errno / log line says why)
} cli_audit_rc_t;

//  Open (create) `path` for appending and find the last seq in it; `after` is
//  where to start when the file holds no event. A torn last line is removed.
//  NULL on error (printed to stderr).
cli_audit_t *cli_audit_new(const char *path, uint64_t after);
void cli_audit_destroy(cli_audit_t **a);

//  The seq of the last event in the file (or `after`).
uint64_t cli_audit_last(const cli_audit_t *a);

//  Reopen the file by name (after rotation); 0 / -1.
int cli_audit_reopen(cli_audit_t *a);

//  Append one event (data may be NULL = {}; eid, source may be NULL).
cli_audit_rc_t cli_audit_write(cli_audit_t *a, uint64_t seq, uint64_t ts, const char *name,
                               const char *eid, const char *source, const msgpack_object *data);

//  Append one entry of an events.reply `events` array (a map: seq, ts, name,
//  eid, source, data). Malformed entries are CLI_AUDIT_ERROR with errno EINVAL.
cli_audit_rc_t cli_audit_write_row(cli_audit_t *a, const msgpack_object *row);

//  The JSON line (with "\n") for an event, malloc'd, caller frees. NULL on failure.
char *cli_audit_render(uint64_t seq, uint64_t ts, const char *name, const char *eid,
                       const char *source, const msgpack_object *data, size_t *len);

//  The seq a line written by cli_audit_render starts with; -1 if it is not one.
int cli_audit_line_seq(const char *line, size_t len, uint64_t *seq);

//  The `audit` subcommand: subscribe, fill gaps, write, until SIGINT/SIGTERM.
extern const pm_opt_t cli_audit_opts[];
int cli_audit_run(cli_ctx_t *ctx);

#endif
