// Small helpers: ids, clocks, timestamps, event validation. Internal (not exported).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace et {

int64_t steady_ms();   // monotonic milliseconds
int64_t unix_ms();     // wall clock, milliseconds since the epoch
uint64_t random_u64(); // per-thread generator seeded from the OS
void uuid_v7(char out[37]);  // time-ordered, hyphenated, NUL-terminated
std::string uuid_v4();
void format_utc_ms(int64_t unix_ms, char out[25]);  // 2026-11-27T10:00:00.123Z, NUL-terminated
std::string format_utc_ms(int64_t unix_ms);
// Checks the server's timestamp grammar and the 2000-01-01 lower bound; writes the instant in seconds.
bool timestamp_valid(std::string_view s, int64_t *unix_s);
bool uuid_valid(std::string_view s);
// An HTTP-date (RFC 9110: IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT"; also RFC 850 and asctime forms)
// as seconds since the epoch.
bool parse_http_date(std::string_view s, int64_t *unix_s);
// Text field (name, ids): UTF-8, no NUL, 1..200 characters (0 allowed when allow_empty).
bool text_valid(std::string_view s, bool allow_empty);

}  // namespace et
