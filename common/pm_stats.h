/*  pm_stats — per-process counters, gauges and latency histograms, published
 *  on the event plane and rendered in the Prometheus text format (issue #7,
 *  docs/metrics.md). Used by every daemon's main.c and by the gateway's admin
 *  listener (gateway/gw_admin.c), which serves them all on GET /metrics.
 *
 *  A registry holds up to PM_STATS_MAX_SERIES series, allocated once by
 *  pm_stats_new: registering or bumping a series never allocates. A series is
 *  a metric name (without the `picomdm_` prefix, [a-z_][a-z0-9_]*) plus up to
 *  two label pairs. Bumping is a plain increment (each process is
 *  single-threaded: no lock, no atomic). All bump functions accept NULL (a
 *  module run without stats, e.g. in a unit test, passes NULL handles).
 *
 *  Histograms have fixed buckets (pm_stats_bucket_ms, in milliseconds,
 *  Prometheus-style: an observation counts in every bucket whose bound is >=
 *  it, kept per bucket and made cumulative on output) plus sum and count.
 *  The exposition renders them in seconds (`_seconds` names, le in seconds).
 *
 *  Wire form: one `stats` message (proto/pm_msgtab.def) with topic
 *  `stats.<process>`, published with pm_bus_publish; the store does not log
 *  it (it is not an `event`). Ownership: pm_stats_snapshot returns a message
 *  the caller destroys; pm_stats_render returns a malloc'd text the caller frees.
 */
#ifndef PM_STATS_H
#define PM_STATS_H

#include "pm_bus.h"
#include "pm_cfg.h"
#include "pm_msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PM_STATS_MAX_SERIES 512
#define PM_STATS_NAME_MAX 64  //  metric name, label key
#define PM_STATS_LABEL_MAX 64 //  label value (longer values are cut)
#define PM_STATS_NBUCKETS 11

//  0.5 1 2 5 10 20 50 100 250 500 1000 (ms); +Inf is the count.
extern const double pm_stats_bucket_ms[PM_STATS_NBUCKETS];

typedef enum { PM_STATS_COUNTER = 1, PM_STATS_GAUGE, PM_STATS_HISTOGRAM } pm_stats_kind_t;

typedef struct pm_stats pm_stats_t;
typedef struct pm_stats_series pm_stats_series_t;

//  A registry for `process` ("gateway"...). instance NULL = "<hostname>:<pid>".
//  interval_s: how often the snapshot is published (0 = never). NULL on OOM.
pm_stats_t *pm_stats_new(const char *process, const char *instance, int interval_s);
void pm_stats_destroy(pm_stats_t **st);

const char *pm_stats_process(const pm_stats_t *st);
const char *pm_stats_instance(const pm_stats_t *st);

//  Find or create a series. k1/v1 and k2/v2 are label pairs (NULL = none).
//  `help` is kept from the first series of a name. Returns NULL (logged once)
//  if st is NULL, a name or label key is not [a-z_][a-z0-9_]*, the kind
//  differs from an earlier series of that name, or the registry is full.
//  The handle stays valid until pm_stats_destroy.
pm_stats_series_t *pm_stats_get(pm_stats_t *st, pm_stats_kind_t kind, const char *name,
                                const char *help, const char *k1, const char *v1, const char *k2,
                                const char *v2);
//  Shorthands without labels.
pm_stats_series_t *pm_stats_counter(pm_stats_t *st, const char *name, const char *help);
pm_stats_series_t *pm_stats_gauge(pm_stats_t *st, const char *name, const char *help);
pm_stats_series_t *pm_stats_histogram(pm_stats_t *st, const char *name, const char *help);

//  Hot path (all NULL-safe, no allocation).
void pm_stats_inc(pm_stats_series_t *s);
void pm_stats_add(pm_stats_series_t *s, uint64_t n);
//  Counter copied from a count the code keeps anyway (a collect callback).
void pm_stats_set_count(pm_stats_series_t *s, uint64_t n);
void pm_stats_set(pm_stats_series_t *s, double v); //  gauge
void pm_stats_observe_ms(pm_stats_series_t *s, double ms);
//  Current value (counter/gauge) or count (histogram); 0 for NULL. Tests.
double pm_stats_value(const pm_stats_series_t *s);

//  Milliseconds on the monotonic clock (for latency observations).
double pm_stats_now_ms(void);
//  Seconds since the epoch on the wall clock (to line up log lines with
//  other processes' and tools' timestamps).
double pm_stats_wall_s(void);

//  Called by pm_stats_snapshot before it reads the series: copy counts kept
//  elsewhere (pm_bus_stats, push_apns_stats...) into series. One per registry.
typedef void(pm_stats_collect_fn)(void *arg, pm_stats_t *st);
void pm_stats_set_collect(pm_stats_t *st, pm_stats_collect_fn *fn, void *arg);

//  Copy the bus client's counters (pm_bus_stats) into bus_*_total series.
//  pm_stats_tick does it before every snapshot.
void pm_stats_collect_bus(pm_stats_t *st, const pm_bus_t *bus);

//  The registry as a `stats` message (caller destroys), NULL on OOM.
pm_msg_t *pm_stats_snapshot(pm_stats_t *st);

//  Publish a snapshot if interval_s has passed since the last one (call it
//  from the main loop as often as you like; cheap when not due). Returns 1 if
//  published, 0 if not due or off, -1 on failure (logged once per minute).
int pm_stats_tick(pm_stats_t *st, pm_bus_t *bus);
//  True (and the next one is scheduled) when a snapshot is due: for loops
//  that publish without a pm_bus_t (the broker).
bool pm_stats_due(pm_stats_t *st);
//  Milliseconds until pm_stats_tick has something to do (-1: never).
int pm_stats_next_ms(const pm_stats_t *st);

//  Prometheus text exposition 0.0.4 of several snapshots (`stats` messages;
//  anything else or malformed metrics are skipped). ages_s[i] is how old
//  snapshot i is (picomdm_stats_age_seconds). Series of one name are grouped
//  under one # HELP / # TYPE, names get the `picomdm_` prefix and every
//  series the labels process and instance. Returns a malloc'd NUL-terminated
//  text (caller frees), NULL on OOM.
char *pm_stats_render(const pm_msg_t *const *snaps, const double *ages_s, size_t n, size_t *len);

/* ---- the receiving side: the latest snapshot of every process ---- */

typedef struct pm_stats_board pm_stats_board_t;

//  Up to `max` snapshots (one per process + instance). NULL on OOM.
pm_stats_board_t *pm_stats_board_new(int max);
void pm_stats_board_destroy(pm_stats_board_t **board);

//  Keep a copy of `snap` (a `stats` message from the bus; the caller keeps
//  its own), replacing the earlier one of the same process and instance.
//  0, or -1 if it is not a `stats` message, the board is full, or on OOM.
int pm_stats_board_put(pm_stats_board_t *board, const pm_msg_t *snap);

//  Forget the snapshots older than max(min_keep_s, 10 of their intervals).
void pm_stats_board_expire(pm_stats_board_t *board, double min_keep_s);
int pm_stats_board_count(const pm_stats_board_t *board);

//  pm_stats_render of every snapshot on the board (ages from when each
//  arrived), plus `own` (may be NULL) with age 0. Caller frees; NULL on OOM.
char *pm_stats_board_render(const pm_stats_board_t *board, const pm_msg_t *own, size_t *len);

//  A registry from the PM_STATS_OPTION options of `cfg` (stats-interval-s
//  between 0 and 86400). 0 and *out set, or -1 (reason logged: exit).
int pm_stats_from_cfg(const pm_cfg_t *cfg, const char *process, pm_stats_t **out);

//  The options every daemon adds to its table (see pm_stats_from_cfg).
#define PM_STATS_OPTION                                                                            \
    {"stats-interval-s", PM_OPT_INT, "10",                                                         \
     "publish counters on the event plane (topic stats.<process>) this often, seconds (0 = off)"}, \
    {                                                                                              \
        "stats-instance", PM_OPT_STR, NULL,                                                        \
            "instance label of our metrics (default <hostname>:<pid>)"                             \
    }

#endif
