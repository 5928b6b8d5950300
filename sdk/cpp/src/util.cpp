#include "util.hpp"

#include <chrono>
#include <random>
#include <thread>

#include "json.hpp"

namespace et {

int64_t steady_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

int64_t unix_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

namespace {
struct Rng {
  uint64_t s = 0;
  bool seeded = false;
};
thread_local Rng tl_rng;  // trivially destructible: safe at process exit
uint64_t splitmix(uint64_t &x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
void hex_uuid(const unsigned char b[16], char out[37]) {
  static const char hex[] = "0123456789abcdef";
  int k = 0;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[k++] = '-';
    out[k++] = hex[b[i] >> 4];
    out[k++] = hex[b[i] & 15];
  }
  out[k] = '\0';
}
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}
}  // namespace

uint64_t random_u64() {
  Rng &r = tl_rng;
  if (!r.seeded) {
    std::random_device rd;
    r.s = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
          static_cast<uint64_t>(std::hash<std::thread::id>()(std::this_thread::get_id())) ^
          static_cast<uint64_t>(steady_ms());
    r.seeded = true;
  }
  return splitmix(r.s);
}

void uuid_v7(char out[37]) {
  unsigned char b[16];
  uint64_t ms = static_cast<uint64_t>(unix_ms());
  for (int i = 0; i < 6; i++) b[i] = static_cast<unsigned char>(ms >> (40 - 8 * i));
  uint64_t r1 = random_u64(), r2 = random_u64();
  for (int i = 6; i < 16; i++) b[i] = static_cast<unsigned char>((i < 12 ? r1 >> (8 * (i - 6)) : r2 >> (8 * (i - 12))));
  b[6] = static_cast<unsigned char>(0x70 | (b[6] & 0x0F));
  b[8] = static_cast<unsigned char>(0x80 | (b[8] & 0x3F));
  hex_uuid(b, out);
}

std::string uuid_v4() {
  unsigned char b[16];
  uint64_t r1 = random_u64(), r2 = random_u64();
  for (int i = 0; i < 8; i++) b[i] = static_cast<unsigned char>(r1 >> (8 * i));
  for (int i = 0; i < 8; i++) b[8 + i] = static_cast<unsigned char>(r2 >> (8 * i));
  b[6] = static_cast<unsigned char>(0x40 | (b[6] & 0x0F));
  b[8] = static_cast<unsigned char>(0x80 | (b[8] & 0x3F));
  char out[37];
  hex_uuid(b, out);
  return out;
}

void format_utc_ms(int64_t ms, char out[25]) {
  // Plain arithmetic (Howard Hinnant's civil_from_days): no gmtime_r, no locale, no lock, no allocation.
  int64_t secs = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
  int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
  int64_t sod = secs - days * 86400, milli = ms - secs * 1000;
  int64_t z = days + 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  int64_t d = doy - (153 * mp + 2) / 5 + 1;
  int64_t m = mp < 10 ? mp + 3 : mp - 9;
  int64_t y = yoe + era * 400 + (m <= 2);
  auto put = [&](int pos, int64_t v, int width) {
    for (int i = width - 1; i >= 0; i--, v /= 10) out[pos + i] = static_cast<char>('0' + v % 10);
  };
  put(0, y, 4);
  out[4] = '-';
  put(5, m, 2);
  out[7] = '-';
  put(8, d, 2);
  out[10] = 'T';
  put(11, sod / 3600, 2);
  out[13] = ':';
  put(14, sod / 60 % 60, 2);
  out[16] = ':';
  put(17, sod % 60, 2);
  out[19] = '.';
  put(20, milli, 3);
  out[23] = 'Z';
  out[24] = '\0';
}

std::string format_utc_ms(int64_t ms) {
  char buf[25];
  format_utc_ms(ms, buf);
  return buf;
}

bool timestamp_valid(std::string_view s, int64_t *unix_s) {
  auto digits = [&](size_t from, size_t n, unsigned *v) {
    *v = 0;
    for (size_t i = from; i < from + n; i++) {
      if (i >= s.size() || s[i] < '0' || s[i] > '9') return false;
      *v = *v * 10 + static_cast<unsigned>(s[i] - '0');
    }
    return true;
  };
  if (s.size() < 19 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':') return false;
  unsigned y, mo, d, h, mi, se;
  if (!digits(0, 4, &y) || !digits(5, 2, &mo) || !digits(8, 2, &d) || !digits(11, 2, &h) ||
      !digits(14, 2, &mi) || !digits(17, 2, &se))
    return false;
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    size_t start = ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') i++;
    if (i == start || i - start > 9) return false;
  }
  int64_t offset_s = 0;
  std::string_view rest = s.substr(i);
  if (rest.empty() || rest == "Z") {
  } else if (rest.size() == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':') {
    unsigned oh, om;
    if (!digits(i + 1, 2, &oh) || !digits(i + 4, 2, &om) || oh > 23 || om > 59) return false;
    offset_s = (rest[0] == '-' ? -1 : 1) * static_cast<int64_t>(oh * 3600 + om * 60);
  } else {
    return false;
  }
  static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (mo < 1 || mo > 12 || d < 1) return false;
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  unsigned maxd = mdays[mo - 1] + (mo == 2 && leap ? 1 : 0);
  if (d > maxd || h > 23 || mi > 59 || se > 59) return false;
  int64_t t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offset_s;
  if (t < 946684800) return false;  // the server's --min-timestamp default, 2000-01-01T00:00:00Z
  if (unix_s) *unix_s = t;
  return true;
}

bool parse_http_date(std::string_view s, int64_t *unix_s) {
  static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  // Tokens: words and numbers, separators ' ' ',' '-' ':'.
  std::string_view tok[8];
  int n = 0;
  size_t i = 0;
  while (i < s.size() && n < 8) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',' || s[i] == '-' || s[i] == ':')) i++;
    size_t start = i;
    while (i < s.size() && s[i] != ' ' && s[i] != ',' && s[i] != '-' && s[i] != ':') i++;
    if (i > start) tok[n++] = s.substr(start, i - start);
  }
  auto num = [](std::string_view t, int64_t *v) {
    if (t.empty() || t.size() > 4) return false;
    *v = 0;
    for (char ch : t) {
      if (ch < '0' || ch > '9') return false;
      *v = *v * 10 + (ch - '0');
    }
    return true;
  };
  auto month = [&](std::string_view t) {
    for (int m = 0; m < 12; m++)
      if (t == months[m]) return m + 1;
    return 0;
  };
  int64_t d = 0, y = 0, h = 0, mi = 0, se = 0;
  int mo = 0;
  if (n >= 8 && (mo = month(tok[2])) && num(tok[1], &d) && num(tok[3], &y) && num(tok[4], &h) &&
      num(tok[5], &mi) && num(tok[6], &se) && tok[7] == "GMT") {
    if (tok[3].size() == 2) y += y < 70 ? 2000 : 1900;  // RFC 850's two-digit year
  } else if (n >= 7 && (mo = month(tok[1])) && num(tok[2], &d) && num(tok[3], &h) && num(tok[4], &mi) &&
             num(tok[5], &se) && num(tok[6], &y)) {  // asctime: "Sun Nov  6 08:49:37 1994"
  } else {
    return false;
  }
  if (d < 1 || d > 31 || h > 23 || mi > 59 || se > 60 || y < 1970) return false;
  *unix_s = days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) * 86400 + h * 3600 + mi * 60 + se;
  return true;
}

bool uuid_valid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < 36; i++) {
    char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

bool text_valid(std::string_view s, bool allow_empty) {
  size_t chars = 0;
  if (!utf8_check(s, &chars)) return false;
  if (chars == 0 && !allow_empty) return false;
  return chars <= 200;
}

}  // namespace et
