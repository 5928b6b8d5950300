#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>

#include <string>

#include "platform.hpp"

namespace et {

std::wstring utf8_to_wide(std::string_view s) {
  if (s.empty()) return std::wstring();
  int n = MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), nullptr, 0);
  std::wstring w(static_cast<size_t>(n), L'\0');
  MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), &w[0], n);
  return w;
}

std::string wide_to_utf8(const wchar_t *w, size_t len) {
  if (!len) return std::string();
  int n = WideCharToMultiByte(CP_UTF8, 0, w, static_cast<int>(len), nullptr, 0, nullptr, nullptr);
  std::string s(static_cast<size_t>(n), '\0');
  WideCharToMultiByte(CP_UTF8, 0, w, static_cast<int>(len), &s[0], n, nullptr, nullptr);
  return s;
}

namespace {

std::string last_error() {
  DWORD e = GetLastError();
  wchar_t *buf = nullptr;
  FormatMessageW(FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, nullptr,
                 e, 0, reinterpret_cast<wchar_t *>(&buf), 0, nullptr);
  std::string out = "error " + std::to_string(e);
  if (buf) {
    std::string m = wide_to_utf8(buf, wcslen(buf));
    while (!m.empty() && (m.back() == '\n' || m.back() == '\r' || m.back() == ' ')) m.pop_back();
    out += ": " + m;
    LocalFree(buf);
  }
  return out;
}

}  // namespace

bool FileLock::acquire(const std::string &path, std::string *err, bool *locked) {
  *locked = false;
  // No sharing: a second opener (this or another process) fails with a sharing violation.
  HANDLE h = CreateFileW(utf8_to_wide(path).c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr, OPEN_ALWAYS,
                         FILE_ATTRIBUTE_NORMAL, nullptr);
  if (h == INVALID_HANDLE_VALUE) {
    DWORD e = GetLastError();
    if (e == ERROR_SHARING_VIOLATION || e == ERROR_LOCK_VIOLATION) {
      *locked = true;
    } else {
      *err = "cannot open queue lock " + path + ": " + last_error();
    }
    return false;
  }
  handle_ = reinterpret_cast<long long>(h);
  return true;
}

void FileLock::release() {
  if (handle_ != -1) CloseHandle(reinterpret_cast<HANDLE>(handle_));
  handle_ = -1;
}

bool rename_file(const std::string &from, const std::string &to, std::string *err) {
  if (MoveFileExW(utf8_to_wide(from).c_str(), utf8_to_wide(to).c_str(), 0)) return true;
  if (err) *err = last_error();
  return false;
}

const char *platform_name() { return "windows"; }

std::string os_name() { return "Windows"; }

std::string os_version() {
  // RtlGetVersion tells the truth (GetVersionEx lies to unmanifested programs).
  using Fn = LONG(WINAPI *)(OSVERSIONINFOW *);
  HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
  auto fn = ntdll ? reinterpret_cast<Fn>(reinterpret_cast<void *>(GetProcAddress(ntdll, "RtlGetVersion"))) : nullptr;
  OSVERSIONINFOW v{};
  v.dwOSVersionInfoSize = sizeof v;
  if (!fn || fn(&v) != 0) return "";
  return std::to_string(v.dwMajorVersion) + "." + std::to_string(v.dwMinorVersion) + "." +
         std::to_string(v.dwBuildNumber);
}

}  // namespace et
