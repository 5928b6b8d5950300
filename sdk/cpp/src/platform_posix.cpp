#include <fcntl.h>
#include <sys/file.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "platform.hpp"

namespace et {

bool FileLock::acquire(const std::string &path, std::string *err, bool *locked) {
  *locked = false;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    *err = "cannot open queue lock " + path + ": " + std::strerror(errno);
    return false;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    *locked = true;
    return false;
  }
  handle_ = fd;
  return true;
}

void FileLock::release() {
  if (handle_ >= 0) ::close(static_cast<int>(handle_));
  handle_ = -1;
}

bool rename_file(const std::string &from, const std::string &to, std::string *err) {
  if (std::rename(from.c_str(), to.c_str()) == 0) return true;
  if (err) *err = std::strerror(errno);
  return false;
}

const char *platform_name() {
#if defined(__ANDROID__)
  return "android";
#elif defined(__APPLE__)
  return "macos";
#elif defined(__linux__)
  return "linux";
#elif defined(__FreeBSD__)
  return "freebsd";
#else
  return "unix";
#endif
}

std::string os_name() {
  struct utsname u {};
  return uname(&u) == 0 ? std::string(u.sysname) : std::string();
}

std::string os_version() {
  struct utsname u {};
  return uname(&u) == 0 ? std::string(u.release) : std::string();
}

}  // namespace et
