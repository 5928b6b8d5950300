// Small helpers: ids, clocks, timestamps, event validation. Internal (not exported).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace et {

int64_t steady_ms();   // monotonic milliseconds
int64_t unix_ms();     // wall clock, milliseconds since the epoch
uint64_t random_u64(); // per-thread generator seeded from the OS
std::string uuid_v7();
std::string uuid_v4();
std::string format_utc_ms(int64_t unix_ms);  // 2026-11-27T10:00:00.123Z
// Checks the server's timestamp grammar and the 2000-01-01 lower bound; writes the instant in seconds.
bool timestamp_valid(std::string_view s, int64_t *unix_s);
bool uuid_valid(std::string_view s);
// Text field (name, ids): UTF-8, no NUL, 1..200 characters (0 allowed when allow_empty).
bool text_valid(std::string_view s, bool allow_empty);

}  // namespace et
