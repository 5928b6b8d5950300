/* EventTracker C SDK: the stable C ABI (C89-compatible header, only et_* symbols are exported).
 *
 * One et_client owns one background thread, one queue (a SQLite file in WAL mode, or memory) and one
 * HTTP connection to ingest-api. Every function is thread-safe; et_track never blocks on I/O.
 * Two clients in one process are independent (no global state besides libcurl's one-time init).
 *
 * Durability: an event accepted by et_track waits at most persist_interval_ms (50 ms) in memory before it is
 * committed to the queue file; an app crash loses only those (the `buffered` counter), a committed event is
 * sent by the next client opening the same file. Do not use a client across fork(). Report callbacks run
 * on the client's thread and must not block: et_client_free waits for a callback in progress.
 *
 * Only ingest-api's own answers remove an event from the queue: a 200 whose body is the contract's
 * success JSON and adds up to the batch, a 400/413 whose body is the contract's error JSON. Anything else
 * (a captive portal's page, a proxy's 400/413, a redirect, a truncated body) is a failed attempt: the
 * batch is kept and retried with backoff, and an ET_REPORT_RETRY says what came back. */
#ifndef EVENTTRACKER_EVENTTRACKER_H
#define EVENTTRACKER_EVENTTRACKER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#if defined(ET_STATIC)
#define ET_API
#elif defined(ET_BUILDING)
#define ET_API __declspec(dllexport)
#else
#define ET_API __declspec(dllimport)
#endif
#else
#define ET_API __attribute__((visibility("default")))
#endif

#define ET_VERSION_MAJOR 1
#define ET_VERSION_MINOR 1
#define ET_VERSION_PATCH 0

typedef struct et_client et_client;

/* ---- return codes of et_track / et_track_event ------------------------------------------------- */
#define ET_OK 0
#define ET_E_NAME 1          /* name missing, empty, > 200 characters, NUL, or not UTF-8 */
#define ET_E_PROPERTIES 2    /* not a JSON object, > 32 KiB, nested > 32 levels, NUL, bad UTF-8/number */
#define ET_E_USER_ID 3       /* > 200 characters, NUL, or not UTF-8 */
#define ET_E_DEVICE_ID 4     /* same rules as user_id */
#define ET_E_SESSION_ID 5    /* same rules as user_id */
#define ET_E_TIMESTAMP 6     /* not YYYY-MM-DDTHH:MM:SS[.f{1,9}][Z|+HH:MM], no such date, before 2000 */
#define ET_E_EVENT_ID 7      /* not a UUID xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx */
#define ET_E_QUEUE_FULL 20   /* the in-memory hand-off buffer is full (max_buffer_events): retry later */
#define ET_E_CLOSED 21       /* the client is closing */
#define ET_E_ARGUMENT 22     /* NULL client or event, or an argument out of range */
#define ET_E_NO_CONSENT 23   /* the player revoked consent: nothing is kept */

/* endpoint: the server's base URL ("http://host:8080"); the SDK posts to <endpoint>/v1/events.
   queue_path NULL: memory only. Returns NULL and writes a message into err (bad URL, empty token,
   queue file locked or unusable). */
ET_API et_client *et_client_new(const char *endpoint, const char *token, const char *queue_path,
                                char *err, size_t err_len);

/* Like et_client_new, with options applied before the client starts (a NULL-terminated list of name,
   value pairs, e.g. {"require_consent", "1", "app_version", "1.4.2", NULL}); NULL options = none. A bad
   option fails the call, naming it in err. Some options exist only here (require_consent). */
ET_API et_client *et_client_new_with_options(const char *endpoint, const char *token, const char *queue_path,
                                             const char *const *options, char *err, size_t err_len);

/* Options by name, applied from the next batch on; 0 = ok, non-zero = unknown option or bad value.
   Numbers are decimal text, booleans "0"/"1".
     token, endpoint                  credentials and base URL (a change resumes a paused client)
     max_batch_events (100, 1..1000)  max_batch_bytes (524288: JSON before gzip, >= 4096)
     flush_interval_ms (1000)         gzip (1: bodies above gzip_min_bytes=1024 are gzipped)
     max_queue_events (50000)         max_queue_bytes (8388608: sum of event JSON sizes; phones, consoles)
     max_buffer_events (10000)        persist_interval_ms (50: longest an event waits in memory)
     connect_timeout_ms (10000)       request_timeout_ms (30000)
     retry_initial_ms (1000)          retry_max_ms (300000)   pause_ms (300000: retry after 401/404/...)
     ca_file, ca_path, proxy          verify_tls (1)          user_agent
     device_id, session_id            ("" for device_id/session_id is refused)
     app_version, app_build, locale   context sent with every event as $app_version, $app_build, $locale
                                      (locale defaults to LC_ALL/LC_MESSAGES/LANG as "de-DE")
     send_context (1)                 0: no $-prefixed context properties at all
     global_properties                a JSON object whose members every event's properties start with
                                      (the event's own keys win; "" clears)
     require_consent (0)              et_client_new_with_options only: a queue file that has no recorded
                                      choice starts ET_CONSENT_PENDING instead of ET_CONSENT_GRANTED

   Every event's properties are: the reserved context {"$sdk", "$sdk_version", "$platform", "$os",
   "$os_version", "$app_version", "$app_build", "$locale"} (empty ones left out), then the global
   properties, then the event's own; the server's 32 KiB limit applies to the merged text.          */
ET_API int et_client_set(et_client *client, const char *option, const char *value);

/* properties_json: NULL or a JSON object as text; user_id: NULL or text.
   0 = queued; non-zero = refused: one of the ET_E_* codes above. */
ET_API int et_track(et_client *client, const char *name, const char *properties_json,
                    const char *user_id);

/* Every field. NULL fields: event_id generated (UUIDv7), timestamp now (UTC, milliseconds),
   device_id/session_id the client's, user_id and properties absent. */
typedef struct et_event {
  const char *name;
  const char *properties_json;
  const char *user_id;
  const char *device_id;
  const char *session_id;
  const char *timestamp; /* the server's grammar, e.g. "2026-11-27T10:00:00.123Z" */
  const char *event_id;  /* idempotency key; keep it when re-tracking the same event */
} et_event;

/* Like et_track; event_id_out (NULL or >= 37 bytes) receives the event's id when queued. */
ET_API int et_track_event(et_client *client, const et_event *event, char *event_id_out);

/* 0 when everything tracked so far was answered by the server before timeout_ms; 1 on timeout.
   (Events dropped by the queue cap or purged count as answered; a paused client, or one whose consent
   is pending, times out. From a report callback: 1 at once.) */
ET_API int et_flush(et_client *client, int timeout_ms);

/* Stops within timeout_ms (plus 250 ms at most), keeps what was not sent in the queue file, frees the
   client. A request in progress is cut off. If the network stack does not let go in time (a libcurl
   older than 7.87 joining a stalled DNS lookup, an app's transport that ignores the cancel flag), it
   returns anyway and the SDK's thread frees the client when it gets out; the queue file stays locked
   until then. */
ET_API void et_client_free(et_client *client, int timeout_ms);

typedef struct et_counters {
  uint64_t tracked;  /* accepted by et_track in this client's life */
  uint64_t refused;  /* refused by et_track (invalid event, buffer full) */
  uint64_t queued;   /* waiting now: in memory + in the queue (including a previous run's) */
  uint64_t buffered; /* of those, not yet written to the queue (what a crash can lose) */
  uint64_t sent;     /* accepted by the server (left the queue on 200) */
  uint64_t rejected; /* rejected by the server (200 `rejected` entries, 400): reported, not resent */
  uint64_t dropped;  /* dropped by the SDK: oldest past the queue cap, or a single event answered 413 */
  uint64_t retries;  /* requests answered 408/429/5xx or failed on the network, to be retried */
  uint64_t requests; /* HTTP requests attempted */
  int paused;        /* 1 while sending is paused after 401/403/404/405/415/... */
  int queue_resets;  /* 1 if a corrupt queue file was moved aside at start */
} et_counters;

/* Fills *out; 0 = ok. */
ET_API int et_client_counters(et_client *client, et_counters *out);

/* Reports (called on the client's background thread; keep it short). A callback may call any et_*
   function of its client: et_flush returns 1 at once (it would wait for this very thread), et_client_free
   returns at once and the client is freed when the callback has returned. */
#define ET_REPORT_REJECTED 1    /* the server rejected one event (status 200 or 400; index, event_id) */
#define ET_REPORT_TOO_LARGE 2   /* a single event answered 413: dropped */
#define ET_REPORT_DROPPED 3     /* count oldest events dropped past the queue cap */
#define ET_REPORT_PAUSED 4      /* sending paused (status, message); retried after pause_ms */
#define ET_REPORT_RETRY 5       /* a request will be retried after retry_after_ms (status 0 = network) */
#define ET_REPORT_QUEUE_RESET 6 /* the queue file was corrupt: moved aside (message names it) */
#define ET_REPORT_REQUEST 7     /* a request is about to be sent (count events) */
#define ET_REPORT_SENT 8        /* a request was answered 200 (count accepted) */
#define ET_REPORT_ERROR 9       /* a local error (SQLite), message says which */
#define ET_REPORT_PURGED 10     /* count events deleted by et_client_purge or revoked consent */

typedef struct et_report {
  int kind;
  int status;             /* HTTP status, 0 for a network error or none */
  int index;              /* index of the event in its batch, or -1 */
  int count;              /* events concerned */
  int64_t retry_after_ms; /* ET_REPORT_RETRY / ET_REPORT_PAUSED: wait before the next attempt */
  const char *event_id;   /* or NULL */
  const char *message;    /* never NULL */
  int64_t time_ms;        /* CLOCK_MONOTONIC milliseconds when it happened (for RETRY: the moment the
                             wait starts, so the next REQUEST comes at time_ms + retry_after_ms or later) */
} et_report;

typedef void (*et_report_fn)(void *user, const et_report *report);

/* Sets (or with NULL clears) the report callback; reports made before any callback was set
   (e.g. a queue reset at start) are delivered to the first one, on the calling thread. */
ET_API void et_client_set_report_callback(et_client *client, et_report_fn fn, void *user);

/* ---- a transport of the app's own -------------------------------------------------------------
   A console SDK or a game engine may send the SDK's requests through its own HTTP stack. The function
   is called on the client's sending thread, one request at a time, and returns when the exchange is
   over: it fills the response with the setters below (no status set, or 0 = no HTTP answer: a network
   failure, retried like one). It must return promptly once et_http_request_cancelled() turns 1 (close
   and purge cut a request short) and never take longer than timeout_ms in all. Every delivery rule
   (gzip, Retry-After, the 413 split, pause on 401, only ingest-api's answers remove events) applies to
   what it returns exactly as to the built-in transports (WinHTTP on Windows, libcurl elsewhere). */
typedef struct et_http_response et_http_response; /* opaque: filled through the setters */
typedef struct et_http_request {
  const char *method;               /* "POST" */
  const char *url;                  /* <endpoint>/v1/events */
  const char *const *header_names;  /* header_count names and values: Content-Type, Authorization, */
  const char *const *header_values; /* Content-Encoding (when gzipped), User-Agent */
  size_t header_count;
  const void *body;
  size_t body_len;
  int connect_timeout_ms;
  int timeout_ms; /* the whole exchange */
  const void *internal;
} et_http_request;

typedef void (*et_transport_fn)(void *user, const et_http_request *request, et_http_response *response);

/* Installs fn (NULL: the built-in transport again), used from the next request on. 0 = ok. */
ET_API int et_client_set_transport(et_client *client, et_transport_fn fn, void *user);
/* 1 once the SDK wants the request to end now (close, purge): return at once. */
ET_API int et_http_request_cancelled(const et_http_request *request);
ET_API void et_http_response_set_status(et_http_response *response, int status);
/* Response headers the SDK reads: Retry-After, Content-Type (names in any letter case). */
ET_API void et_http_response_set_header(et_http_response *response, const char *name, const char *value);
/* Appends body bytes (the first 1 MiB are kept). */
ET_API void et_http_response_append_body(et_http_response *response, const void *data, size_t len);
/* For a failure without an HTTP answer: what went wrong (reported in ET_REPORT_RETRY). */
ET_API void et_http_response_set_error(et_http_response *response, const char *message);

/* ---- consent ---------------------------------------------------------------------------------
   The player's choice, recorded in the queue file (it survives restarts; a memory-only client keeps it
   in memory). GRANTED: events are sent. PENDING: events are kept on the device (within the queue caps)
   and not sent until GRANTED. REVOKED: nothing is kept: what was queued is deleted (as et_client_purge)
   and et_track refuses with ET_E_NO_CONSENT until consent is given again. A batch already on the wire when
   consent is revoked is cut off; the server may still have received it. */
#define ET_CONSENT_PENDING 0
#define ET_CONSENT_GRANTED 1
#define ET_CONSENT_REVOKED 2

/* Sets the consent state and returns once it is recorded (and, for REVOKED, the queue emptied and its
   space given back). 0 = done; ET_E_ARGUMENT for an unknown state. From a report callback it returns at
   once and takes effect when the callback returns. */
ET_API int et_client_set_consent(et_client *client, int consent);

/* The current consent state, or -1 for NULL. */
ET_API int et_client_consent(et_client *client);

/* Deletes every event queued (memory and file) and gives the file's space back; reported as
   ET_REPORT_PURGED. Waits like et_client_set_consent. Consent is unchanged. */
ET_API int et_client_purge(et_client *client);

/* "1.1.0" */
ET_API const char *et_version(void);

/* ---- Properties without writing JSON ----------------------------------------------------------------
 * An et_props builds the properties_json object of one event: the SDK escapes the strings and formats
 * the numbers (integers exactly, doubles as the shortest text that reads back the same: 0.1 stays 0.1;
 * never affected by the C locale), and refuses at once what et_track would refuse.
 *
 *   et_props *p = et_props_new();
 *   et_props_string(p, "map", "dust \"2\"");
 *   et_props_int(p, "score", 1200);
 *   et_props_begin_array(p, "items");      -- inside an array the key must be NULL
 *   et_props_string(p, NULL, "sword");
 *   et_props_end(p);
 *   et_track(client, "level_up", et_props_json(p), NULL);
 *                                          -- {"map":"dust \"2\"","score":1200,"items":["sword"]}
 *   et_props_clear(p);                     -- reuse it for the next event; at the end et_props_free(p)
 *
 * Every adding function returns 0, or ET_E_ARGUMENT (NULL builder), or ET_E_PROPERTIES: key or value not
 * UTF-8 or NULL where one is needed, a key inside an array or none inside an object, a NaN or infinite
 * number, nesting deeper than 32 levels (the outermost object is level 1), or the finished object past
 * 32 KiB (the server's limits). A refused call leaves the builder as it was. Keys are written as given:
 * a repeated key is kept twice in the text, and PostgreSQL (jsonb) keeps its last value.
 * A builder is not thread-safe; use one per thread or lock around it. */
typedef struct et_props et_props;

/* A builder holding the empty object {}; NULL when out of memory. */
ET_API et_props *et_props_new(void);
ET_API void et_props_free(et_props *props);
/* Back to the empty object {}. */
ET_API void et_props_clear(et_props *props);

ET_API int et_props_string(et_props *props, const char *key, const char *value);
ET_API int et_props_int(et_props *props, const char *key, int64_t value);
ET_API int et_props_double(et_props *props, const char *key, double value);
/* The shortest text that reads back as the same float (0.1f is written 0.1). */
ET_API int et_props_float(et_props *props, const char *key, float value);
/* value: 0 writes false, anything else true. */
ET_API int et_props_bool(et_props *props, const char *key, int value);
ET_API int et_props_null(et_props *props, const char *key);
/* Opens a nested object or array as the value of key (NULL inside an array); et_props_end closes the
   innermost one (ET_E_PROPERTIES when only the outermost object is open: et_props_json closes that). */
ET_API int et_props_begin_object(et_props *props, const char *key);
ET_API int et_props_begin_array(et_props *props, const char *key);
ET_API int et_props_end(et_props *props);

/* The JSON object text, or NULL while an object or array is still open (or props is NULL). The text
   belongs to the builder: valid until the next call that changes or frees it. */
ET_API const char *et_props_json(const et_props *props);

#ifdef __cplusplus
}
#endif

#endif /* EVENTTRACKER_EVENTTRACKER_H */
