#!/usr/bin/env bash
# 7. Packaging: install the built SDK into a temporary prefix; build a consumer with
#    find_package(EventTracker CONFIG), one with pkg-config, a C file against the header; check the
#    exported symbols are only et_* (no C++ ABI).   Usage: packaging.sh SRC BUILD CMAKE LIBFILE
set -euo pipefail
src=$1 build=$2 cmake=$3 lib=$4
tmp=$(mktemp -d "${TMPDIR:-/tmp}/et-sdk-pkg.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
"$cmake" --install "$build" --prefix "$prefix" >/dev/null
echo "installed into $prefix"

# exported symbols: only et_*, nothing mangled
syms=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sed 's/@.*//')
bad=$(echo "$syms" | grep -v '^et_' || true)
[ -z "$bad" ] || { echo "FAIL: exported symbols other than et_*:"; echo "$bad"; exit 1; }
echo "$syms" | grep -q '^_Z' && { echo "FAIL: C++ symbols exported"; exit 1; }
echo "exported: $(echo "$syms" | tr '\n' ' ')"
soname=$(objdump -p "$lib" | awk '$1 == "SONAME" {print $2}')
[ "$soname" = libeventtracker.so.1 ] || { echo "FAIL: SONAME is '$soname'"; exit 1; }

# a consumer project with find_package, in a temporary folder
mkdir -p "$tmp/consumer"
cat > "$tmp/consumer/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.25)
project(consumer LANGUAGES C CXX)
set(CMAKE_CXX_STANDARD 17)
find_package(EventTracker 1.0 CONFIG REQUIRED)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE EventTracker::eventtracker)
add_executable(consumer_c main.c)
target_link_libraries(consumer_c PRIVATE EventTracker::eventtracker)
CM
cat > "$tmp/consumer/main.cpp" <<'CPP'
#include <eventtracker/client.hpp>
#include <cstdio>
int main() {
  eventtracker::Client c("http://127.0.0.1:9", "token");  // memory queue, nothing listening
  if (c.track("consumer_started", R"({"ok":true})") != ET_OK) return 1;
  if (c.track("") != ET_E_NAME) return 2;
  c.close(std::chrono::milliseconds(0));
  std::printf("consumer ok %s\n", et_version());
  return 0;
}
CPP
cat > "$tmp/consumer/main.c" <<'C'
#include <eventtracker/eventtracker.h>
#include <stdio.h>
int main(void) {
  char err[256];
  et_counters k;
  et_client *c = et_client_new("http://127.0.0.1:9", "token", NULL, err, sizeof err);
  if (!c) { fprintf(stderr, "%s\n", err); return 1; }
  if (et_track(c, "c_consumer", "{\"lang\":\"c\"}", NULL) != ET_OK) return 2;
  et_client_counters(c, &k);
  et_client_free(c, 0);
  printf("c consumer ok tracked=%llu\n", (unsigned long long)k.tracked);
  return k.tracked == 1 ? 0 : 3;
}
C
"$cmake" -S "$tmp/consumer" -B "$tmp/consumer/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
"$cmake" --build "$tmp/consumer/build" -j2 >/dev/null
LD_LIBRARY_PATH="$prefix/lib:${LD_LIBRARY_PATH:-}" "$tmp/consumer/build/consumer"
LD_LIBRARY_PATH="$prefix/lib:${LD_LIBRARY_PATH:-}" "$tmp/consumer/build/consumer_c"

# the header compiles as strict C (C89 and C11), warnings as errors
for std in c89 c11; do
  cc -std=$std -pedantic -Wall -Wextra -Werror -fsyntax-only -I"$prefix/include" "$tmp/consumer/main.c" \
    -Wno-long-long -Wno-declaration-after-statement
done
echo "header compiles as C89 and C11"

# pkg-config
libdir=$(ls -d "$prefix"/lib*/pkgconfig | head -1)
flags=$(PKG_CONFIG_PATH="$libdir" pkg-config --cflags --libs eventtracker)
cc -o "$tmp/pc_consumer" "$tmp/consumer/main.c" $flags
LD_LIBRARY_PATH="$prefix/lib:${LD_LIBRARY_PATH:-}" "$tmp/pc_consumer"
echo "pkg-config: $flags"

# add_subdirectory works too
mkdir -p "$tmp/sub"
cat > "$tmp/sub/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.25)
project(sub LANGUAGES C CXX)
add_subdirectory("$src" eventtracker)
add_executable(sub_consumer "$tmp/consumer/main.cpp")
target_link_libraries(sub_consumer PRIVATE EventTracker::eventtracker)
CM
"$cmake" -S "$tmp/sub" -B "$tmp/sub/build" >/dev/null
"$cmake" --build "$tmp/sub/build" -j2 >/dev/null
"$tmp/sub/build/sub_consumer"
echo "PASS packaging"
