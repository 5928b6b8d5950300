// The platform layer: everything the SDK needs from the OS that POSIX and Windows do differently.
// One implementation per platform (platform_posix.cpp, platform_win32.cpp); nothing OS-specific elsewhere.
// Paths are UTF-8 everywhere (converted to UTF-16 on Windows).
#pragma once
#include <string>
#include <string_view>

namespace et {

// An exclusive lock on a file next to the queue, held while a client has the queue open, released by
// the OS if the process dies. acquire() fails at once (no waiting) when another holder has it.
class FileLock {
 public:
  FileLock() = default;
  ~FileLock() { release(); }
  FileLock(const FileLock &) = delete;
  FileLock &operator=(const FileLock &) = delete;
  // false with *err set: the file cannot be opened, or (*locked = true) someone else holds the lock.
  bool acquire(const std::string &path, std::string *err, bool *locked);
  void release();

 private:
  long long handle_ = -1;  // a file descriptor, or a HANDLE's value
};

// Renames (replacing nothing): the queue file moved aside when corrupt.
bool rename_file(const std::string &from, const std::string &to, std::string *err);

// "linux", "windows", "macos", "android", ...; the OS's name and release ("Linux", "6.1.0-18-amd64";
// "Windows", "10.0.19045").
const char *platform_name();
std::string os_name();
std::string os_version();

#if defined(_WIN32)
// UTF-8 <-> UTF-16, for the wide Windows APIs.
std::wstring utf8_to_wide(std::string_view s);
std::string wide_to_utf8(const wchar_t *w, size_t len);
#endif

}  // namespace et
