// The harness's Windows part (the suite cross-built with MinGW and run under Wine). A Windows process cannot
// start the Linux ingest-api, flusher, redis-server or psql, so scripts/sdk-controller does that on the Linux
// side: a small HTTP service on 127.0.0.1 whose address scripts/test-sdk passes in ET_TEST_CONTROLLER. Each
// request is a POST of newline-separated arguments; the answer is text (200) or the error (any other status).
// The test helper is a local process: CreateProcessW, killed with TerminateProcess. /metrics is read directly
// (ingest-api listens on 127.0.0.1, which is the same loopback under Wine).
#include "harness.hpp"
#include "../src/platform.hpp"

#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>

namespace h {

namespace {

// The SDK's own conversions (platform_win32.cpp is compiled into the tests).
std::wstring wide(const std::string &s) { return et::utf8_to_wide(s); }
std::string narrow(const std::wstring &w) { return et::wide_to_utf8(w.data(), w.size()); }

void wsa_init() {
  static const bool ok = [] {
    WSADATA d;
    return WSAStartup(MAKEWORD(2, 2), &d) == 0;
  }();
  need(ok, "WSAStartup failed");
}

// A socket the processes the tests start do not inherit.
SOCKET tcp_socket() {
  wsa_init();
  return WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, nullptr, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
}

struct HttpAnswer {
  int status = 0;
  std::string body;
};

// One HTTP/1.1 request to http://127.0.0.1:PORT/... (Connection: close), the answer read to its end.
HttpAnswer http(const std::string &method, const std::string &url, const std::string &body, DWORD timeout_ms) {
  need(url.rfind("http://", 0) == 0, "not an http:// URL: " + url);
  std::string rest = url.substr(7);
  size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash), path = slash == std::string::npos ? "/" : rest.substr(slash);
  size_t colon = hostport.rfind(':');
  need(colon != std::string::npos, "no port in " + url);
  addrinfo hints{}, *ai = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  wsa_init();
  need(getaddrinfo(hostport.substr(0, colon).c_str(), hostport.substr(colon + 1).c_str(), &hints, &ai) == 0 && ai,
       "cannot resolve " + url);
  SOCKET fd = tcp_socket();
  need(fd != INVALID_SOCKET, "socket failed");
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, reinterpret_cast<const char *>(&timeout_ms), sizeof timeout_ms);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, reinterpret_cast<const char *>(&timeout_ms), sizeof timeout_ms);
  int rc = connect(fd, ai->ai_addr, static_cast<int>(ai->ai_addrlen));
  freeaddrinfo(ai);
  if (rc != 0) {
    closesocket(fd);
    need(false, method + " " + url + ": cannot connect (WSA error " + std::to_string(WSAGetLastError()) + ")");
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: " + hostport + "\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  for (size_t sent = 0; sent < req.size();) {
    int n = send(fd, req.data() + sent, static_cast<int>(req.size() - sent), 0);
    if (n <= 0) {
      closesocket(fd);
      need(false, method + " " + url + ": send failed");
    }
    sent += static_cast<size_t>(n);
  }
  std::string in;
  char buf[65536];
  for (;;) {
    int n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n < 0) {
      closesocket(fd);
      need(false, method + " " + url + ": no (whole) answer (WSA error " + std::to_string(WSAGetLastError()) + ")");
    }
    in.append(buf, static_cast<size_t>(n));
  }
  closesocket(fd);
  size_t hend = in.find("\r\n\r\n");
  need(in.rfind("HTTP/", 0) == 0 && hend != std::string::npos, method + " " + url + ": not an HTTP answer");
  HttpAnswer a;
  a.status = std::atoi(in.c_str() + in.find(' ') + 1);
  a.body = in.substr(hend + 4);
  std::string head = in.substr(0, hend);
  for (char &ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  size_t cl = head.find("\r\ncontent-length:");
  if (cl != std::string::npos) {
    size_t want = std::strtoul(head.c_str() + cl + 17, nullptr, 10);
    if (a.body.size() > want) a.body.resize(want);
  }
  return a;
}

// Asks scripts/sdk-controller to do `op` with these arguments (one a line; the last may hold newlines).
std::string control(const std::string &op, const std::vector<std::string> &args) {
  std::string base = env("ET_TEST_CONTROLLER");
  need(!base.empty(),
       "ET_TEST_CONTROLLER is not set: the Windows tests need scripts/sdk-controller (scripts/test-sdk starts it)");
  std::string body;
  for (size_t i = 0; i < args.size(); i++) body += (i ? "\n" : "") + args[i];
  HttpAnswer a = http("POST", base + "/" + op, body, 180000);
  need(a.status == 200, "controller " + op + ": " + std::to_string(a.status) + " " + a.body);
  return a.body;
}

std::vector<std::string> lines(const std::string &s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string l;
  while (std::getline(in, l)) out.push_back(l);
  return out;
}

// MSVCRT's rules: quotes around an argument with blanks or quotes, backslashes before a quote doubled.
std::wstring quote_arg(const std::wstring &a) {
  if (!a.empty() && a.find_first_of(L" \t\n\v\"") == std::wstring::npos) return a;
  std::wstring q = L"\"";
  size_t backslashes = 0;
  for (wchar_t c : a) {
    if (c == L'\\') {
      backslashes++;
      continue;
    }
    q.append(c == L'"' ? backslashes * 2 + 1 : backslashes, L'\\');
    backslashes = 0;
    q.push_back(c);
  }
  q.append(backslashes * 2, L'\\');
  q.push_back(L'"');
  return q;
}

// The current environment with `envs` set (a CreateProcessW environment block, names sorted, case-insensitive).
std::wstring environment_with(const std::vector<std::pair<std::string, std::string>> &envs) {
  struct Less {
    bool operator()(const std::wstring &a, const std::wstring &b) const { return _wcsicmp(a.c_str(), b.c_str()) < 0; }
  };
  std::map<std::wstring, std::wstring, Less> vars;
  wchar_t *block = GetEnvironmentStringsW();
  for (const wchar_t *p = block; *p; p += wcslen(p) + 1) {
    std::wstring kv = p;
    size_t eq = kv.find(L'=', 1);  // "=C:=C:\..." entries start with '='
    if (eq == std::wstring::npos) continue;
    vars[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  FreeEnvironmentStringsW(block);
  for (auto &kv : envs) vars[wide(kv.first)] = wide(kv.second);
  std::wstring out;
  for (auto &kv : vars) out += kv.first + L"=" + kv.second + L'\0';
  out.push_back(L'\0');
  return out;
}

// Every process the tests start is in this job: it dies with the test process (a test killed by a timeout
// takes its helper with it, as PR_SET_PDEATHSIG does on Linux).
HANDLE the_job() {
  static HANDLE job = [] {
    HANDLE j = CreateJobObjectW(nullptr, nullptr);
    if (j) {
      JOBOBJECT_EXTENDED_LIMIT_INFORMATION info{};
      info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
      SetInformationJobObject(j, JobObjectExtendedLimitInformation, &info, sizeof info);
    }
    return j;
  }();
  return job;
}

constexpr unsigned kStoppedExitCode = 128 + 15;  // stop(): as a shell shows a SIGTERMed process
}  // namespace

std::string bin_dir() {
  std::string d = env("ET_BIN_DIR");
  need(!d.empty(), "ET_BIN_DIR is not set (the folder with ingest-api and flusher; scripts/test-sdk sets it)");
  return d;
}

// Beside the test executable (the build's path of it is a Linux path, which a Windows process cannot use).
std::string helper_path() {
  std::string h = env("ET_TEST_HELPER");
  if (!h.empty()) return h;
  wchar_t buf[MAX_PATH * 4];
  DWORD n = GetModuleFileNameW(nullptr, buf, static_cast<DWORD>(sizeof buf / sizeof buf[0]));
  std::wstring self(buf, n);
  return narrow(self.substr(0, self.find_last_of(L"\\/") + 1)) + "et_test_helper.exe";
}

uint16_t free_port() {
  SOCKET fd = tcp_socket();
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
  int len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
  closesocket(fd);
  return ntohs(a.sin_port);
}

// A fresh folder under the Windows temporary folder (GetTempPath: %TEMP%; under Wine inside the prefix).
std::string temp_dir() {
  wchar_t buf[MAX_PATH + 1];
  DWORD n = GetTempPathW(MAX_PATH + 1, buf);
  need(n > 0, "GetTempPathW failed");
  std::string base = narrow(std::wstring(buf, n));
  for (;;) {
    std::string d = base + unique("et-sdk-test");
    if (CreateDirectoryW(wide(d).c_str(), nullptr)) {
      keep_temp_dir(d);
      return d;
    }
    need(GetLastError() == ERROR_ALREADY_EXISTS, "cannot create a folder in " + base);
  }
}

std::string sh(const std::string &cmd, int *) {
  need(false, "h::sh() is POSIX only (on Windows, the controller runs what the tests need): " + cmd);
  return "";
}

bool under_wine() {
  HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
  return ntdll && GetProcAddress(ntdll, "wine_get_version") != nullptr;
}

void utc_tm(time_t secs, struct tm *out) {
  ULARGE_INTEGER t;
  t.QuadPart = (static_cast<uint64_t>(secs) + 11644473600ull) * 10000000ull;  // 100 ns since 1601
  FILETIME ft;
  ft.dwLowDateTime = t.LowPart;
  ft.dwHighDateTime = t.HighPart;
  SYSTEMTIME st{};
  need(FileTimeToSystemTime(&ft, &st) != 0, "FileTimeToSystemTime failed for " + std::to_string(secs));
  *out = tm{};
  out->tm_year = st.wYear - 1900;
  out->tm_mon = st.wMonth - 1;
  out->tm_mday = st.wDay;
  out->tm_hour = st.wHour;
  out->tm_min = st.wMinute;
  out->tm_sec = st.wSecond;
  out->tm_wday = st.wDayOfWeek;
}

std::string http_get(const std::string &url) {
  HttpAnswer a = http("GET", url, "", 30000);
  need(a.status == 200, "GET " + url + ": " + std::to_string(a.status));
  return a.body;
}

// ---- processes -------------------------------------------------------------------------------

Proc::Proc(const std::string &name, const std::vector<std::string> &argv,
           const std::vector<std::pair<std::string, std::string>> &envs)
    : name_(name) {
  static std::string logdir = temp_dir();
  log_path_ = logdir + "\\" + unique(name) + ".log";
  SECURITY_ATTRIBUTES sa{};
  sa.nLength = sizeof sa;
  sa.bInheritHandle = TRUE;
  HANDLE log = CreateFileW(wide(log_path_).c_str(), GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                           &sa, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL, nullptr);
  need(log != INVALID_HANDLE_VALUE, "cannot create " + log_path_);
  std::wstring cmdline;
  for (auto &a : argv) cmdline += (cmdline.empty() ? L"" : L" ") + quote_arg(wide(a));
  std::wstring environment = envs.empty() ? std::wstring() : environment_with(envs);

  // Only the log file is inherited (not the fake servers' sockets, nor other tests' files).
  STARTUPINFOEXW si{};
  si.StartupInfo.cb = sizeof si;
  si.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
  si.StartupInfo.hStdInput = nullptr;
  si.StartupInfo.hStdOutput = log;
  si.StartupInfo.hStdError = log;
  SIZE_T size = 0;
  InitializeProcThreadAttributeList(nullptr, 1, 0, &size);
  std::vector<char> attrs(size);
  auto *list = reinterpret_cast<LPPROC_THREAD_ATTRIBUTE_LIST>(attrs.data());
  DWORD flags = CREATE_UNICODE_ENVIRONMENT | CREATE_SUSPENDED;
  if (size && InitializeProcThreadAttributeList(list, 1, 0, &size) &&
      UpdateProcThreadAttribute(list, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST, &log, sizeof log, nullptr, nullptr)) {
    si.lpAttributeList = list;
    flags |= EXTENDED_STARTUPINFO_PRESENT;
  } else {
    si.StartupInfo.cb = sizeof si.StartupInfo;
  }
  PROCESS_INFORMATION pi{};
  BOOL ok = CreateProcessW(nullptr, &cmdline[0], nullptr, nullptr, TRUE, flags,
                           environment.empty() ? nullptr : &environment[0], nullptr, &si.StartupInfo, &pi);
  DWORD err = GetLastError();
  if (si.lpAttributeList) DeleteProcThreadAttributeList(list);
  CloseHandle(log);
  need(ok, "CreateProcessW " + argv[0] + " failed: error " + std::to_string(err));
  if (HANDLE job = the_job()) AssignProcessToJobObject(job, pi.hProcess);
  ResumeThread(pi.hThread);
  CloseHandle(pi.hThread);
  handle_ = pi.hProcess;
  pid_ = static_cast<pid_t>(pi.dwProcessId);
}

std::unique_ptr<Proc> Proc::remote(const std::string &name, const std::string &id) {
  std::unique_ptr<Proc> p(new Proc());
  p->name_ = name;
  p->remote_ = id;
  return p;
}

Proc::~Proc() {
  try {
    stop();
  } catch (...) {  // the controller went away: it stops what it started itself
  }
  if (handle_) CloseHandle(static_cast<HANDLE>(handle_));
}

std::string Proc::log() const { return remote_.empty() ? read_file(log_path_) : control("proc/log", {remote_}); }

void Proc::signal(int sig) const {
  if (!remote_.empty()) {
    control("proc/signal", {remote_, std::to_string(sig)});
    return;
  }
  need(sig == SIGKILL || sig == SIGTERM, name_ + ": only SIGKILL and SIGTERM (TerminateProcess) exist on Windows");
  if (handle_ && !reaped_) TerminateProcess(static_cast<HANDLE>(handle_), 128 + static_cast<unsigned>(sig));
}

bool Proc::running() {
  if (reaped_) return false;
  if (!remote_.empty()) {
    std::string s = control("proc/status", {remote_});
    if (s == "running") return true;
    status_ = std::atoi(s.c_str());
  } else {
    if (WaitForSingleObject(static_cast<HANDLE>(handle_), 0) == WAIT_TIMEOUT) return true;
    DWORD code = 0;
    GetExitCodeProcess(static_cast<HANDLE>(handle_), &code);
    // TerminateProcess with 128 + a signal's number stands for that signal (kKilledExitCode for SIGKILL).
    if (code == kKilledExitCode || code == kStoppedExitCode)
      status_ = -1000 - static_cast<int>(code - 128);
    else
      status_ = static_cast<int>(code);
  }
  reaped_ = true;
  return false;
}

int Proc::wait_exit(int64_t limit_ms) {
  if (!wait_until([&] { return !running(); }, limit_ms)) return INT32_MIN;
  return status_;
}

void Proc::stop() {
  if (!remote_.empty()) {
    if (!reaped_) control("proc/stop", {remote_});
    reaped_ = true;
    return;
  }
  if (!handle_ || !running()) return;
  TerminateProcess(static_cast<HANDLE>(handle_), kStoppedExitCode);
  wait_exit(10000);
}

// ---- the services, on the Linux side -----------------------------------------------------------

Redis::Redis() {
  auto l = lines(control("redis/start", {}));
  need(l.size() >= 2, "controller redis/start: unexpected answer");
  proc_ = Proc::remote("redis", l[0]);
  port_ = static_cast<uint16_t>(std::stoi(l[1]));
}

Ingest::Ingest(const std::string &redis_url, const std::string &stream_key, const std::vector<std::string> &extra) {
  std::vector<std::string> args = {redis_url, stream_key};
  args.insert(args.end(), extra.begin(), extra.end());
  auto l = lines(control("ingest/start", args));
  need(l.size() >= 2, "controller ingest/start: unexpected answer");
  proc = Proc::remote("ingest-api", l[0]);
  url = l[1];
}

Db::Db() {
  auto l = lines(control("db/create", {}));
  need(l.size() >= 2, "controller db/create: unexpected answer");
  name_ = l[0];
  url = l[1];
}

Db::~Db() {
  try {
    control("db/drop", {name_});
  } catch (...) {  // the controller drops what is left when it stops
  }
}

std::string Db::query(const std::string &sql) const {
  std::string out = control("db/query", {url, sql});
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

Flusher::Flusher(const std::string &redis_url, const std::string &db_url, const std::string &stream_key) {
  proc = Proc::remote("flusher", control("flusher/start", {redis_url, db_url, stream_key}));
}

}  // namespace h
