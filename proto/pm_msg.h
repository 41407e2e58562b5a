/*  pm_msg — bus messages: the table, the envelope, the encoder and the strict
 *  decoder. Used by every process; the only way anything goes on the bus.
 *
 *  Wire format (msgpack map, string keys):
 *      { "v": PM_PROTO_VERSION, "type": "<name>", "rid": "<request id>",
 *        "ts": <ms since epoch>, "body": { <fields of that type> } }
 *  The decoder rejects: bytes that are not exactly one msgpack map (trailing
 *  bytes included), another protocol version, an unknown type, an unknown or
 *  missing required field, a field of the wrong msgpack type, nesting deeper
 *  than PM_MSG_MAX_DEPTH, and any length larger than the bytes present — all
 *  before msgpack-c allocates anything (see pm_mpck.h).
 */
#ifndef PM_MSG_H
#define PM_MSG_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PM_PROTO_VERSION 14
//  FNV-1a 64 of the table (names, services, fields, types, required flags).
//  The pm_msg test fails when the table changes and this does not.
#define PM_PROTO_FINGERPRINT 0xb32f0d3e7e3eaec9ULL

#define PM_MSG_MAX_BYTES (16u * 1024 * 1024) //  also ZMQ_MAXMSGSIZE on every bus socket
#define PM_MSG_MAX_DEPTH 32
#define PM_MSG_MAX_ELEMENTS (1u << 20) //  array/map entries in one message, all levels
#define PM_RID_MAX 64

typedef enum {
    PM_T_STR = 1, //  msgpack str
    PM_T_INT,     //  integer (positive or negative), fits int64
    PM_T_UINT,    //  non-negative integer
    PM_T_BOOL,
    PM_T_FLOAT, //  float32/64 (an integer is accepted and widened)
    PM_T_BIN,
    PM_T_MAP,   //  any map (string keys not enforced inside)
    PM_T_ARRAY, //  any array
    PM_T_STRS,  //  array of str
    PM_T_ANY,   //  anything
    PM_T_TIME   //  msgpack timestamp extension (type -1)
} pm_ftype_t;

typedef struct {
    const char *name;
    pm_ftype_t type;
    bool required;
    const char *doc;
} pm_field_t;

typedef enum {
    PM_MSG_INVALID = 0,
#define PM_MSG(id, name, svc, doc) PM_MSG_##id,
#define PM_FIELD(id, name, type, req, doc)
#define PM_END(id)
#include "pm_msgtab.def"
#undef PM_MSG
#undef PM_FIELD
#undef PM_END
    PM_MSG_COUNT
} pm_msg_type_t;

typedef struct {
    pm_msg_type_t type;
    const char *name;
    const char *service;
    const char *doc;
    const pm_field_t *fields; //  terminated by name == NULL
    int nfields;
} pm_msgdef_t;

//  The table, indexed by pm_msg_type_t (entry 0 is PM_MSG_INVALID, all NULL).
const pm_msgdef_t *pm_msgdef(pm_msg_type_t type);
pm_msg_type_t pm_msg_type_from_name(const char *name); //  PM_MSG_INVALID if unknown
const char *pm_msg_type_name(pm_msg_type_t type);
const char *pm_ftype_name(pm_ftype_t t);
uint64_t pm_msg_table_fingerprint(void);

typedef struct pm_msg pm_msg_t;

//  A new message of `type` with a fresh request id and the current time.
//  Returns NULL on allocation failure. The caller owns it.
pm_msg_t *pm_msg_new(pm_msg_type_t type);
//  A reply to `req`: same request id. type is e.g. PM_MSG_CHECKIN_REPLY or PM_MSG_ERROR.
pm_msg_t *pm_msg_new_reply(const pm_msg_t *req, pm_msg_type_t type);
//  Shorthand: an `error` reply with code and printf-style message.
pm_msg_t *pm_msg_new_error(const pm_msg_t *req, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void pm_msg_destroy(pm_msg_t **msg);

pm_msg_type_t pm_msg_type(const pm_msg_t *msg);
const char *pm_msg_rid(const pm_msg_t *msg);
//  -1 if empty, longer than PM_RID_MAX, or not printable ASCII without spaces
//  (the decoder rejects the same).
int pm_msg_set_rid(pm_msg_t *msg, const char *rid);
uint64_t pm_msg_ts(const pm_msg_t *msg);
int pm_msg_set_ts(pm_msg_t *msg, uint64_t ts_ms); //  tests, replays

//  Setters. Each returns -1 if `field` is not declared for this type with a
//  compatible type (the message is unchanged), 0 otherwise. Values are copied.
int pm_msg_set_str(pm_msg_t *msg, const char *field, const char *value);
int pm_msg_set_strn(pm_msg_t *msg, const char *field, const char *value, size_t len);
int pm_msg_set_int(pm_msg_t *msg, const char *field, int64_t value);
int pm_msg_set_uint(pm_msg_t *msg, const char *field, uint64_t value);
int pm_msg_set_bool(pm_msg_t *msg, const char *field, bool value);
int pm_msg_set_float(pm_msg_t *msg, const char *field, double value);
int pm_msg_set_bin(pm_msg_t *msg, const char *field, const void *data, size_t len);
int pm_msg_set_strs(pm_msg_t *msg, const char *field, const char *const *values, size_t n);
//  TIME field: seconds since epoch (may be negative) and nanoseconds (< 1e9),
//  encoded as the smallest msgpack timestamp (4, 8 or 12 bytes).
int pm_msg_set_time(pm_msg_t *msg, const char *field, int64_t sec, uint32_t nsec);
//  Any field from a msgpack object (deep-copied; type-checked against the table).
int pm_msg_set_obj(pm_msg_t *msg, const char *field, const msgpack_object *obj);
//  Any field from encoded msgpack bytes (checked with pm_mpck first, then copied).
int pm_msg_set_packed(pm_msg_t *msg, const char *field, const uint8_t *data, size_t len);

//  Getters. Absent fields: NULL / the given default / false.
bool pm_msg_has(const pm_msg_t *msg, const char *field);
const char *pm_msg_str(const pm_msg_t *msg, const char *field); //  NUL-terminated copy owned by msg
int64_t pm_msg_int(const pm_msg_t *msg, const char *field, int64_t def);
uint64_t pm_msg_uint(const pm_msg_t *msg, const char *field, uint64_t def);
bool pm_msg_bool(const pm_msg_t *msg, const char *field, bool def);
double pm_msg_float(const pm_msg_t *msg, const char *field, double def);
const uint8_t *pm_msg_bin(const pm_msg_t *msg, const char *field, size_t *len);
const msgpack_object *pm_msg_obj(const pm_msg_t *msg, const char *field); //  owned by msg
//  TIME field: 0 and *sec/*nsec, or -1 if absent / not a timestamp.
int pm_msg_time(const pm_msg_t *msg, const char *field, int64_t *sec, uint32_t *nsec);
//  The value of field number `index` of msg's table (pm_msgdef(type)->fields),
//  owned by msg; NULL if that field is not set or index is out of range. The
//  getters above compare the name with every field; a caller on a hot path
//  resolves its indexes once from pm_msgdef and reads by index.
const msgpack_object *pm_msg_obj_at(const pm_msg_t *msg, int index);

//  Same type, rid, ts and field values (floats compared bitwise). Tests, fuzzing.
bool pm_msg_equal(const pm_msg_t *a, const pm_msg_t *b);

//  Encode. Fails (-1, reason in err) if a required field is missing.
//  On success *out is malloc'd and owned by the caller.
int pm_msg_encode(const pm_msg_t *msg, uint8_t **out, size_t *len, char *err, size_t errlen);

//  Strict decode (see the top of this file). On success *msg is the caller's.
//  On failure returns -1 and a one-line reason in err (never crashes, never
//  allocates more than a small multiple of len).
int pm_msg_decode(const uint8_t *data, size_t len, pm_msg_t **msg, char *err, size_t errlen);

#endif
